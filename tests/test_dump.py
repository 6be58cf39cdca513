"""fp8gemm.dump (fp8gemm-dump, tools/dump.py): every --what mode on small configs, in-process
(CPU only: needs ptxas, no GPU); the console script from a non-editable install."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fp8gemm import jit
from fp8gemm.config import GemmConfig, max_stages, select_config
from fp8gemm.sass_patch.instr import make_instr

ROOT = Path(__file__).resolve().parents[1]


from fp8gemm import dump  # noqa: E402


def _have_ptxas() -> bool:
    try:
        jit.find_ptxas()
        return True
    except FileNotFoundError:
        return False


needs_ptxas = pytest.mark.skipif(not _have_ptxas(), reason="needs ptxas (nvidia-cuda-nvcc wheel)")

SHAPE = ["--m", "256", "--n", "512", "--k", "1024"]
FORCED = SHAPE + ["--block-m", "128", "--block-n", "128", "--stages", "4"]
MULTICAST = SHAPE + ["--block-m", "128", "--block-n", "128", "--multicast", "a"]
CASES = {"heuristic": SHAPE, "forced": FORCED, "multicast": MULTICAST}


def expected_config(case: str) -> GemmConfig:
    if case == "heuristic":
        return select_config(256, 512, 1024, num_sms=132)[0]
    if case == "forced":
        return GemmConfig(128, 128, 4)
    return GemmConfig(128, 128, max_stages(128, 128, 1024), cluster=2, multicast_on_a=True)


@pytest.fixture(autouse=True)
def _tmp_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FP8GEMM_FFMA_INTERLEAVE", raising=False)
    monkeypatch.delenv("FP8GEMM_DISABLE_FFMA_INTERLEAVE", raising=False)


def run(capsys, argv: list[str]) -> str:
    assert dump.main(argv) == 0
    return capsys.readouterr().out


# ---- modes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_config(capsys, case):
    out = run(capsys, CASES[case] + ["--what", "config"])
    cfg = expected_config(case)
    assert re.search(rf"^kernel\s+{cfg.name}$", out, re.M), out
    assert f"stages={cfg.stages}" in out and f"{cfg.smem_bytes} bytes dynamic" in out
    assert f"threads     {cfg.threads}" in out
    assert ("heuristic (select_config)" in out) == (case == "heuristic")


def test_config_debug_and_num_sms(capsys):
    out = run(capsys, FORCED + ["--debug", "--num-sms", "66", "--what", "config"])
    assert GemmConfig(128, 128, 4, debug=True).name in out
    grid = GemmConfig(128, 128, 4).grid(256, 512, 66)
    assert re.search(rf"^grid\s+{grid} CTAs", out, re.M)


@pytest.mark.parametrize("case", CASES)
def test_ptx(capsys, case):
    out = run(capsys, CASES[case] + ["--what", "ptx"])
    assert ".entry" in out and "wgmma" in out and expected_config(case).name in out
    assert out.startswith(".") or out.startswith("//")  # pure PTX, nothing printed before it


@needs_ptxas
@pytest.mark.parametrize("case", CASES)
def test_resources(capsys, case):
    out = run(capsys, CASES[case] + ["--what", "resources"])
    regs = int(re.search(r"^registers\s+(\d+)", out, re.M).group(1))
    assert 0 < regs <= 255
    ffma = int(re.search(r"^\s+FFMA\s+(\d+)", out, re.M).group(1))
    qgmma = int(re.search(r"QGMMA (\d+)", out).group(1))
    assert ffma > 0 and qgmma > 0
    assert re.search(r"^spills\s+\d+ B stores, \d+ B loads", out, re.M)
    assert f"dynamic {expected_config(case).smem_bytes} B" in out
    threads = expected_config(case).threads
    assert re.search(rf"^max threads\s+{threads}x1x1", out, re.M)


@needs_ptxas
def test_sass_with_disassembler(capsys):
    if dump.find_disassembler() is None:
        pytest.skip("no nvdisasm / cuobjdump found")
    out = run(capsys, FORCED + ["--what", "sass"])
    assert "QGMMA" in out and "FFMA" in out
    assert "SASS pass: off" in out  # the library default
    assert re.search(r"FFMA .*// [-R]{4}:B[-0-5]{6}:R[-0-7]:W[-0-7]:[Y-]:S\d\d", out)


@needs_ptxas
def test_sass_builtin_decoder(capsys, monkeypatch):
    monkeypatch.setattr(dump, "find_disassembler", lambda: None)
    out = run(capsys, FORCED + ["--what", "sass"])
    assert "built-in decoder" in out and "QGMMA" in out
    assert re.search(r"/\*[0-9a-f]{4}\*/\s+FFMA R\d+, R\d+, R\d+(\.reuse)?, R\d+", out)


@needs_ptxas
def test_sass_pass_on(capsys):
    out = run(capsys, FORCED + ["--what", "sass", "--sass-pass", "on"])
    assert "SASS pass: on" in out


def _diff_lines(out: str) -> tuple[list[str], int, int]:
    listed = [ln for ln in out.splitlines() if re.match(r"^\s+0x[0-9a-f]+\s", ln)]
    m = re.search(r"^(\d+) instructions changed in (\d+) FFMA runs$", out, re.M)
    assert m, out
    return listed, int(m.group(1)), int(m.group(2))


@needs_ptxas
@pytest.mark.parametrize("case", ["forced", "multicast"])
@pytest.mark.parametrize("extra", [[], ["--fraction", "1"], ["--fraction", "1", "--mode", "yield_only"]])
def test_sass_diff_count_matches_listing(capsys, case, extra):
    out = run(capsys, CASES[case] + ["--what", "sass-diff"] + extra)
    listed, n, runs = _diff_lines(out)
    assert len(listed) == n
    assert len(re.findall(r"^run at 0x[0-9a-f]+, \d+ FFMAs:$", out, re.M)) == runs
    assert "warning" not in out
    for ln in listed:
        assert "FFMA" in ln and "yield 0->1" in ln
        assert ("reuse 0b" in ln) == ("yield_only" not in extra)
    if n == 0:
        assert "the pass changed nothing" in out


@needs_ptxas
def test_sass_diff_says_when_nothing_changed(capsys):
    out = run(capsys, FORCED + ["--what", "sass-diff", "--fraction", "0"])
    listed, n, runs = _diff_lines(out)
    assert listed == [] and n == 0 and runs == 0
    assert "the pass changed nothing" in out


@needs_ptxas
@pytest.mark.parametrize("case", ["forced", "multicast"])
def test_ffma_report(capsys, case):
    out = run(capsys, CASES[case] + ["--what", "ffma-report"])
    counts = {label.strip(): int(v) for label, v in re.findall(r"^\s*([^:\n]+):\s+(\d+)\b", out, re.M)}
    for key in ("runs of >= 8 FFMAs", "FFMAs in those runs", "with yield on",
                "with B reuse on (scale register)", "alternating-pattern runs"):
        assert key in counts, (key, out)
    assert counts["FFMAs in kernel"] > 0
    assert counts["with yield on"] <= counts["FFMAs in those runs"] <= counts["FFMAs in kernel"]
    assert counts["alternating-pattern runs"] <= counts["runs of >= 8 FFMAs"]
    assert "UNPATCHED" in out and "bit 45" in out
    assert re.search(r"ptxas already interleaves\?\s+(no|partly|yes)", out)


# ---- arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (SHAPE + ["--block-n", "12"], "block_n"),
    (SHAPE + ["--block-m", "96"], "block_m"),
    (SHAPE + ["--block-m", "256", "--block-n", "256"], "registers"),
    (SHAPE + ["--block-m", "128", "--block-n", "128", "--stages", "40"], "shared memory"),
    (SHAPE + ["--stages", "0"], "stages"),
    (["--m", "0", "--n", "512", "--k", "1024"], "--m"),
    (SHAPE + ["--fraction", "1.5"], "--fraction"),
    (SHAPE + ["--what", "nonsense"], "--what"),
])
def test_bad_arguments_exit_with_a_message(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        dump.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and words in err


@pytest.mark.parametrize("kind", ["contiguous", "masked"])
def test_other_kinds_build_or_fail_clearly(capsys, kind):
    try:
        out = run(capsys, FORCED + ["--kind", kind, "--what", "config"])
    except SystemExit as e:
        assert e.code == 2 and kind in capsys.readouterr().err
    else:
        assert f"fp8gemm_{kind}_bm128_bn128_s4" in out


@pytest.mark.parametrize("variant,tag", [("fp32", "_f32"), ("fp32_c", "_f32_c"), ("bf16_c", "_c"),
                                         ("wgrad", "_f32_red_sfbrow")])
def test_training_variants(capsys, variant, tag):
    out = run(capsys, ["--m", "512", "--n", "1024", "--k", "1024", "--variant", variant, "--what", "config"])
    heuristic = re.search(r"kernel +(\S+)", out).group(1)
    assert heuristic.endswith(tag)
    forced = run(capsys, FORCED + ["--variant", variant, "--what", "ptx"])
    assert f"fp8gemm_dense_bm128_bn128_s4{tag}" in forced


def test_k_grouped_is_the_wgrad_kernel_with_its_groups(capsys):
    out = run(capsys, FORCED + ["--kind", "k_grouped", "--groups", "3", "--what", "config"])
    assert "fp8gemm_k_grouped_bm128_bn128_s4_f32_red_sfbrow_g3" in out


# ---- helpers (no tools needed) -------------------------------------------------------------
def test_control_diff_names_the_flipped_bits():
    lo = 0x223 | 7 << 12 | 10 << 16 | 4 << 24 | 8 << 32
    hi = 10 | 1 << 41 | 1 << 45 | 7 << 46 | 7 << 49 | 1 << 59
    old, new = make_instr(0, lo, hi), make_instr(0, lo, hi ^ (1 << 45 | 1 << 59))
    assert dump.control_diff(old, new) == "yield 0->1, reuse 0b0010->0b0000"
    assert dump.decoder_text(old) == "FFMA R10, R4, R8.reuse, R10"


def test_instruction_texts_reads_both_disassemblers():
    nvdisasm = ("//--------------------- .text.kern --------------------------\n"
                "        /*0f90*/                   FFMA R141, R28, R8.reuse, R141 ;\n")
    cuobjdump = ("\t\tFunction : kern\n"
                 "        /*0010*/                   @P0 BRA 0x40 ;     /* 0x0000002000000947 */\n"
                 "                                                       /* 0x000fea0003800000 */\n")
    assert dump.instruction_texts(nvdisasm) == {"kern": {0xF90: "FFMA R141, R28, R8.reuse, R141"}}
    assert dump.instruction_texts(cuobjdump) == {"kern": {0x10: "@P0 BRA 0x40"}}


def test_runs_as_a_script_without_torch_or_the_driver():
    code = ("import runpy, sys\n"
            "sys.argv = ['tools/dump.py', '--m', '256', '--n', '512', '--k', '1024', '--what', 'config']\n"
            "try:\n    runpy.run_path('tools/dump.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "from fp8gemm import launcher\n"
            "assert 'torch' not in sys.modules and not launcher._initialised\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "fp8gemm_dense_" in proc.stdout


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "fp8gemm.dump", "--m", "64", "--n", "128", "--k", "256"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "fp8gemm_dense_" in proc.stdout


def _setuptools_builds_wheels() -> bool:
    try:
        import setuptools
        return tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)
    except (ImportError, ValueError):
        return False


def test_console_script_from_a_non_editable_install(tmp_path):
    """Build the wheel, install it (not editable) into a folder of its own, and run its
    fp8gemm-dump from outside the checkout: the tool ships in the package."""
    import importlib.util
    pip = [sys.executable, "-m", "pip"]
    # build in this environment when it can build wheels (setuptools with wheel support), else let
    # pip fetch the build backend as any install does
    can_build = importlib.util.find_spec("wheel") is not None or _setuptools_builds_wheels()
    iso = ["--no-build-isolation"] if can_build else []
    r = subprocess.run([*pip, "wheel", "-q", "--no-deps", *iso, "-w", str(tmp_path / "w"), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "w").glob("fp8gemm-*.whl"))
    site = tmp_path / "site"
    r = subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([str(site / "bin" / "fp8gemm-dump"), "--m", "64", "--n", "128", "--k", "256"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "fp8gemm_dense_" in out.stdout
    where = subprocess.run([sys.executable, "-c", "import fp8gemm; print(fp8gemm.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env).stdout
    assert where.startswith(str(site)), where            # the installed copy, not the checkout
    bench = subprocess.run([str(site / "bin" / "fp8gemm-bench"), "--help"], cwd=tmp_path, capture_output=True,
                           text=True, env=env)
    assert bench.returncode == 0 and "fp8gemm-bench" in bench.stdout, bench.stderr


def test_bench_ships_in_the_package_and_says_it_needs_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "fp8gemm.bench", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "Needs torch" in r.stdout
    have_torch = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0
    if not have_torch:
        r = subprocess.run([sys.executable, "-m", "fp8gemm.bench", "quant"], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "needs torch" in r.stderr
