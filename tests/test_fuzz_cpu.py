"""fp8gemm.fuzz without a GPU: problems are drawn deterministically, every family comes up, the
training problems (fp32, fp32_c, bf16_c, wgrad, k_grouped) pass the library's own argument
checks in the layouts the fuzzer builds, and their forced configs come from the candidate lists.
The checks run on fp8gemm.DeviceArray views of made-up pointers and stop at the first device
query (``arrays.check_same_device``), so nothing touches a GPU."""
from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fp8gemm
from fp8gemm import arrays, fuzz
from fp8gemm.checks import check_problem
from fp8gemm.config import (K_GROUPED_DEFAULT_GROUPS, MAX_K_GROUPS, GemmConfig, candidate_configs,
                            variant_configs)
from fp8gemm.wgrad import check_batch_sizes

ROOT = Path(__file__).resolve().parents[1]
SEED = 3
N_DRAWS = 4000
NEW = ("fp32", "fp32_c", "bf16_c", "wgrad", "k_grouped")


@pytest.fixture(scope="module")
def problems():
    return [fuzz.draw(SEED, i) for i in range(N_DRAWS)]


def test_draw_is_deterministic_and_json_able(problems):
    for i in (0, 1, 17, 999, N_DRAWS - 1):
        assert fuzz.draw(SEED, i) == problems[i]
        assert json.loads(json.dumps(problems[i])) == problems[i]
        assert problems[i]["index"] == i and problems[i]["seed"] == SEED
    assert [fuzz.draw(SEED + 1, i) for i in range(50)] != problems[:50]


def test_every_family_is_drawn_and_the_old_ones_dominate(problems):
    counts = collections.Counter(p["family"] for p in problems)
    assert set(counts) == set(fuzz.FAMILIES), counts
    old = sum(v for f, v in counts.items() if f not in NEW)
    assert old > len(problems) / 2, counts
    for f in NEW:
        assert 1 <= fuzz.FAMILIES[f] <= 2


def test_training_variants_draw_both_c_forms_and_every_c_scale(problems):
    for fam in ("fp32_c", "bf16_c"):
        ps = [p for p in problems if p["family"] == fam]
        assert {p["c_form"] for p in ps} == {"separate", "out"}
        assert {p["c_scale"] for p in ps} == set(fuzz.C_SCALES)
    assert all("c_form" not in p for p in problems if p["family"] in ("fp32", "wgrad"))


def test_k_grouped_draws_cross_the_chunking_and_the_edges(problems):
    ps = [p for p in problems if p["family"] == "k_grouped"]
    ks = [k for p in ps for k in p["ks"]]
    assert any(p["groups"] > MAX_K_GROUPS for p in ps), "no draw crosses the 120-group chunking"
    assert any(p["groups"] == 1 for p in ps)
    for k in (0, 16, 128, 112, 144):
        assert k in ks
    assert max(ks) >= 2048
    assert any(p["group_pad_rows"] for p in ps) and any(p["out_pad"] for p in ps)
    assert all(not p["force"] for p in ps if p["groups"] > MAX_K_GROUPS)   # a config holds one group count


# ---- the library's own checks on the layouts the fuzzer builds -----------------------------------
class _Stop(Exception):
    """Raised where the call would first ask the device: every argument check has passed."""


@pytest.fixture
def no_device(monkeypatch):
    def stop(views):
        raise _Stop
    monkeypatch.setattr(arrays, "check_same_device", stop)


class _Alloc:
    """Made-up, 256-byte aligned, never overlapping device addresses."""
    def __init__(self):
        self.next = 1 << 32

    def __call__(self, nbytes):
        ptr = self.next
        self.next += (nbytes + 511) // 256 * 256
        return ptr


def _guarded(alloc, rows, cols, pad, offset, dtype, isz):
    """fuzz._guarded's view: ``offset`` rows into a [rows + offset + 1, cols + pad] buffer."""
    stride = cols + pad
    base = alloc((rows + offset + 1) * stride * isz)
    return fp8gemm.DeviceArray(base + offset * stride * isz, (rows, cols), dtype, (stride, 1))


def _mn_major_scales(alloc, rows, kb, pad=0, off=0):
    """per_token_cast_to_fp8's scales (``fuzz._quant_a``: padded, starting ``off`` in)."""
    s_rows = fp8gemm.get_tma_aligned_size(rows) + pad
    base = alloc(kb * (s_rows + off) * 4)
    return fp8gemm.DeviceArray(base + off * 4, (rows, kb), "float32", (1, s_rows + off))


def _training_call(p):
    """The call fuzz._run_training makes for ``p``, on DeviceArrays laid out the same way."""
    alloc = _Alloc()
    fam, n, k = p["family"], p["n"], p["k"]
    m = p["m"] if p["m"] * n * k <= fuzz.MAX_WORK else max(1, fuzz.MAX_WORK // (n * k))
    kb = -(-k // 128)
    a = _guarded(alloc, m, k, p["a_pad"], p["row_offset"], "float8_e4m3fn", 1)
    sa = _mn_major_scales(alloc, m, kb, p["sfa_pad"], p["row_offset"] * 4)
    b = fp8gemm.DeviceArray(alloc(n * k), (n, k), "float8_e4m3fn")
    if fam == "wgrad":
        sb = _mn_major_scales(alloc, n, kb)
    else:
        sb = fp8gemm.DeviceArray(alloc(-(-n // 128) * kb * 4), (-(-n // 128), kb), "float32")
    dtype, isz = ("bfloat16", 2) if fam == "bf16_c" else ("float32", 4)
    out = _guarded(alloc, m, n, p["out_pad"], p["row_offset"], dtype, isz)
    kw = {"config": fuzz.forced_config(p)}
    if fam in ("fp32_c", "bf16_c"):
        kw["c"] = out if p["c_form"] == "out" else _guarded(alloc, m, n, p["c_pad"], p["c_offset"], dtype, isz)
    f = {"fp32": fp8gemm.gemm_fp8_fp8_fp32_nt, "fp32_c": fp8gemm.gemm_fp8_fp8_fp32_nt,
         "bf16_c": fp8gemm.gemm_fp8_fp8_bf16_nt, "wgrad": fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt}[fam]
    return f, ((a, sa), (b, sb), out), kw


def _k_grouped_call(p):
    """fuzz._run_k_grouped's call (testing.k_grouped_inputs' flat layout, out inside a padded
    buffer with a guard group before it)."""
    alloc = _Alloc()
    g, m, n, ks = p["groups"], p["m"], p["n"], p["ks"]
    kb_total = sum(-(-k // 128) for k in ks)
    a = fp8gemm.DeviceArray(alloc(m * sum(ks)), (m * sum(ks),), "float8_e4m3fn")
    b = fp8gemm.DeviceArray(alloc(n * sum(ks)), (n * sum(ks),), "float8_e4m3fn")
    sa = fp8gemm.DeviceArray(alloc(kb_total * m * 4), (kb_total, m), "float32")
    sb = fp8gemm.DeviceArray(alloc(kb_total * n * 4), (kb_total, n), "float32")
    rows, cols = m + p["group_pad_rows"], n + p["out_pad"]
    base = alloc((g + 2) * rows * cols * 4)
    out = fp8gemm.DeviceArray(base + rows * cols * 4, (g, m, n), "float32", (rows * cols, cols, 1))
    return ((a, sa), (b, sb), out, ks), {"config": fuzz.forced_config(p)}


@pytest.mark.parametrize("fam", ["fp32", "fp32_c", "bf16_c", "wgrad"])
def test_dense_training_problems_pass_the_librarys_checks(problems, no_device, fam):
    ps = [p for p in problems if p["family"] == fam]
    assert len(ps) > 50
    for p in ps:
        check_problem(fam, p["m"], p["n"], p["k"])
        f, args, kw = _training_call(p)
        with pytest.raises(_Stop):      # every check passed; the next step would ask the device
            f(*args, **kw)


def test_k_grouped_problems_pass_the_librarys_checks(problems, no_device):
    ps = [p for p in problems if p["family"] == "k_grouped"]
    assert len(ps) > 50
    for p in ps:
        assert p["m"] % 8 == 0 and p["n"] % 8 == 0 and 1 <= p["groups"] <= 130, p
        assert check_batch_sizes("fuzz", p["ks"], p["groups"]) == tuple(p["ks"])
        assert p["m"] * p["n"] * sum(p["ks"]) <= fuzz.MAX_WORK
        args, kw = _k_grouped_call(p)
        if not any(p["ks"]):
            fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(*args, **kw)     # nothing to do: returns
            continue
        with pytest.raises(_Stop):
            fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(*args, **kw)


def test_forced_configs_of_the_new_families_are_candidates(problems):
    lists = {f: variant_configs(f, 1 << 14) for f in ("fp32", "fp32_c", "bf16_c", "wgrad")}
    lists["k_grouped"] = candidate_configs(kind="k_grouped")
    seen = collections.Counter()
    for p in problems:
        fam = p["family"]
        if fam not in NEW:
            continue
        cfg = fuzz.forced_config(p)
        if not p["force"]:
            assert cfg is None
            continue
        assert isinstance(cfg, GemmConfig)
        if fam == "k_grouped":
            assert cfg.kind == "k_grouped" and cfg.groups == p["groups"], (cfg, p["groups"])
            cfg = dataclasses.replace(cfg, groups=K_GROUPED_DEFAULT_GROUPS)
        assert cfg in lists[fam], (fam, cfg)
        assert cfg in fuzz.forced_pool(SEED, fam)
        seen[fam] += 1
    assert all(seen[f] > 10 for f in NEW), seen
    assert fuzz.forced_config(dict(problems[0], force=False)) is None


def test_old_families_still_force_their_layouts_configs(problems):
    for p in problems[:400]:
        if p["family"] in ("dense", "contiguous", "masked") and p["force"]:
            cfg = fuzz.forced_config(p)
            assert cfg.kind == fuzz.config_kind(p) and cfg in candidate_configs(1 << 14, cfg.kind)


def test_reproducer_names_seed_and_index():
    line = fuzz.reproducer(7, 4242)
    assert line.startswith("python -m fp8gemm.fuzz") and "--seed 7" in line and "--only 4242" in line


def test_unknown_family_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "fp8gemm.fuzz", "--families", "dense,nope"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "nope" in r.stderr, r.stderr


def test_help_lists_the_training_families():
    r = subprocess.run([sys.executable, "-m", "fp8gemm.fuzz", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    text = "".join(r.stdout.split())
    for f in NEW:
        assert f in text
