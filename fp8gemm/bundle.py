"""Ahead-of-time bundles: the cubins and a manifest a runtime without Python can launch from.

    fp8gemm.export("bundle/", gemm=[(7168, 2048, 4096)], contiguous=[(8, 4096, 7168, 1024)],
                   masked=[(8, 4096, 7168, 256)], k_grouped=[(8, 4096, 7168, 4096)])
    python -m fp8gemm export bundle/ --gemm 7168x2048:4096 --masked 8x4096x7168:256
    python -m fp8gemm export bundle/ --gemm 7168x2048:4096 --variants bf16,fp32,fp32_c,bf16_c,wgrad
    python -m fp8gemm export bundle/ --k-grouped 8x4096x7168:4096

A bundle directory holds ``manifest.json`` (format ``fp8gemm-bundle``, version 1), one
``kernels/<name>.cubin`` per kernel, and the C runtime's sources under ``runtime/``. The
manifest is plain data produced from each kernel's spec: its parameters in order with their
sources, each tensor map (element type, dims, strides, box, swizzle; sizes as expressions over
named problem values), threads, shared memory, cluster, and the work-unit expression that
sizes the persistent grid. Problems map to kernels: a dense ``(N, K)`` of one output variant
(``config.VARIANTS``: op "gemm" for bf16, "gemm_<variant>" for the others, each problem naming
its "variant") carries M ranges (the heuristic's pick for every M up to its maximum), a grouped
problem one kernel (chosen from its expected rows per group; M is a runtime argument).

The k-grouped wgrad GEMM (op "k_grouped_wgrad", ``k_grouped_wgrad_gemm_fp8_fp8_fp32_nt``) is a
problem ``(G, M, N)`` with the groups' K given per call; its kernels are compiled for a group
count and take per-group parameter arrays (``per_group`` parameters and tensor maps: one element
per group, from the group values ``GROUP_VALUES`` and, for a map, at ``offset`` bytes into its
array). As in the Python API, more than ``MAX_K_GROUPS`` groups run as launches of at most that
many, so the problem names the kernel of each chunk size: ``"chunks": [[groups, kernel], ...]``
(the kernel of ``max_groups`` groups, then that of the remainder, if any; each picked by the
heuristic for ``expected_k`` per group). It also holds ``"k"`` (= ``expected_k``) and
``"kernel"`` (the first chunk's) because readers that predate the op require them of every
problem (and skip problems of an op they do not know). Expressions use the grammar of
``ptx_templates/spec.py`` (integers, names, + - * //, min, max, ceil_div), which the C runtime
evaluates too.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from . import jit
from .config import MAX_K_GROUPS, VARIANTS, GemmConfig, select_config, variant_of
from .gemm import dense_arguments
from .ptx_templates import gemm as template
from .wgrad import KGroupedPlan

FORMAT, VERSION = "fp8gemm-bundle", 1
# the op of each dense output variant: "gemm" (bf16, the op of every version-1 bundle) and
# "gemm_<variant>" (readers that predate a variant skip its problems rather than misuse them)
DENSE_OPS = {v: "gemm" if v == "bf16" else f"gemm_{v}" for v in VARIANTS}
# the launch arguments of each operation, in the order the C runtime passes them
ARGUMENTS = {**{op: dense_arguments(bool(VARIANTS[v].get("with_c"))) for v, op in DENSE_OPS.items()},
             "m_grouped_contiguous": ("a", "a_scales", "b", "b_scales", "out", "m_indices"),
             "m_grouped_contiguous_psum": ("a", "a_scales", "b", "b_scales", "out", "group_ends"),
             "m_grouped_masked": ("a", "a_scales", "b", "b_scales", "out", "masked_m"),
             "k_grouped_wgrad": KGroupedPlan.arguments,       # c is out (the kernels that load C read out)
             "per_token_cast": ("x", "q", "scales"),
             "per_block_cast": ("x", "q", "scales")}
# problem values a runtime must supply (besides block_m / block_n, which the kernel fixes)
VALUES = ("m", "n", "k", "groups", "kb", "a_stride", "b_stride", "out_stride", "sfa_stride", "a_group_stride",
          "b_group_stride", "out_group_stride", "sfa_group_stride", "x_stride", "q_stride", "s_stride", "c_stride", "sfb_stride",
          "kb_total", "c_group_stride")
# the values of one group, besides the problem's, for the per-group parameters and maps (k_grouped;
# wgrad.group_values: the group's K, its first K element and K block among all groups', its K blocks)
GROUP_VALUES = ("k_g", "k_start_g", "kb_start_g", "k_blocks_g")
CAST_SOURCES = {"bfloat16": "bf16", "float32": "f32"}
RUNTIME_FILES = ("fp8gemm_rt.h", "fp8gemm_rt.c")


def _add_kernel(key, build, spec: dict, config: dict | None, kernels: dict, folder: Path) -> int:
    """Compile a kernel once into the bundle (``build()`` makes it); its index in the manifest."""
    if key not in kernels:
        kern = build()
        comp = jit.compile_ptx(kern.render(), kern.name)
        (folder / "kernels").mkdir(parents=True, exist_ok=True)
        (folder / "kernels" / f"{kern.name}.cubin").write_bytes(comp.cubin)
        kernels[key] = {"index": len(kernels), "name": kern.name, "cubin": f"kernels/{kern.name}.cubin",
                        "config": config, "spec": spec, "resources": dataclasses.asdict(comp.resources)}
    return kernels[key]["index"]


def _kernel_entry(cfg: GemmConfig, kernels: dict, folder: Path) -> int:
    return _add_kernel(cfg, lambda: template.build(cfg), template.spec(cfg).to_dict(), dataclasses.asdict(cfg),
                       kernels, folder)


def _cast_entry(kind: str, src: str, kernels: dict, folder: Path) -> int:
    from .ptx_templates import quant as qt
    make = qt.per_token_kernel if kind == "token" else qt.per_block_kernel
    return _add_kernel(("cast", kind, src), lambda: make(src), qt.cast_spec(kind, src).to_dict(), None,
                       kernels, folder)


def _m_ranges(n: int, k: int, max_m: int, num_sms: int, kernels: dict, folder: Path,
              variant: str = "bf16") -> list[list[int]]:
    """[[m_lo, m_hi, kernel], ...] covering 1..max_m with the heuristic's pick for each M."""
    out: list[list[int]] = []
    for m in range(1, max_m + 1):
        cfg, _ = select_config(m, n, k, num_sms=num_sms, variant=variant)
        idx = _kernel_entry(cfg, kernels, folder)
        if out and out[-1][2] == idx:
            out[-1][1] = m
        else:
            out.append([m, m, idx])
    return out


def _dense_variants(variants: Iterable[str] | str) -> list[str]:
    """The requested dense variants, checked, without repeats (a single name may be a str)."""
    names = [variants] if isinstance(variants, str) else list(variants)
    out: list[str] = []
    for v in names:
        if isinstance(v, str) and v.startswith("k_grouped"):
            raise ValueError(f"export: variants: {v!r}: the k-grouped wgrad GEMM (k_grouped_wgrad_gemm_fp8_fp8_fp32_nt) "
                             "is not a dense variant: export it with k_grouped=[(G, M, N, expected_k), ...] "
                             f"(--k-grouped GxMxN:EXPECTED_K); dense variants are {list(VARIANTS)}")
        if v not in VARIANTS:
            raise ValueError(f"export: variants: must be among {list(VARIANTS)}, got {v!r}")
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError("export: variants: name at least one dense variant")
    return out


def k_grouped_chunks(groups: int, max_groups: int = MAX_K_GROUPS) -> list[int]:
    """The group counts of the launches that run ``groups`` k-grouped groups, in order: chunks of
    ``max_groups`` and the remainder last (``k_grouped_wgrad_gemm_fp8_fp8_fp32_nt``'s split)."""
    return [min(max_groups, groups - g0) for g0 in range(0, groups, max_groups)]


def export(folder: str | Path, *, gemm: Iterable[Sequence[int]] = (), contiguous: Iterable[Sequence[int]] = (),
           contiguous_psum: Iterable[Sequence[int]] = (), masked: Iterable[Sequence[int]] = (),
           k_grouped: Iterable[Sequence[int]] = (), casts: Iterable[str] = (),
           variants: Iterable[str] | str = ("bf16",), num_sms: int = 132, runtime: bool = True) -> dict:
    """Write a bundle for these problems into ``folder`` and return its manifest.

    ``gemm``: (N, K, max_M) -- kernels for every M in 1..max_M, for each of ``variants``
    (``config.VARIANTS``: "bf16" -- gemm_fp8_fp8_bf16_nt, "fp32" -- gemm_fp8_fp8_fp32_nt,
    "bf16_c" / "fp32_c" -- their ``c=`` forms, "wgrad" -- wgrad_gemm_fp8_fp8_fp32_nt);
    ``contiguous`` / ``contiguous_psum`` / ``masked``: (G, N, K, expected_rows_per_group);
    ``k_grouped``: (G, M, N, expected_k) -- k_grouped_wgrad_gemm_fp8_fp8_fp32_nt for G groups of
    M x N, the kernels picked as ``KGroupedPlan`` picks them (``select_config(..., kind="k_grouped")``)
    for ``expected_k`` per group: for G > MAX_K_GROUPS the kernel of MAX_K_GROUPS groups and, if
    G is not a multiple, that of the remainder; ``casts``: source dtypes ("bfloat16", "float32")
    whose per-token and per-block casts to include. ``num_sms``: the SM count the heuristic plans
    for (the runtime sizes grids with the device's own count).
    """
    from .checks import check_problem, positive_int
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dense = _dense_variants(variants)
    kernels: dict = {}
    problems = []
    for item in gemm:
        n, k, max_m = (positive_int(f"export: gemm {tuple(item)}", x) for x in item)
        check_problem("export gemm", max_m, n, k)
        for v in dense:
            problems.append({"op": DENSE_OPS[v], "variant": v, "n": n, "k": k, "max_m": max_m,
                             "ranges": _m_ranges(n, k, max_m, num_sms, kernels, folder, v)})
    for op, kind, items in (("m_grouped_contiguous", "contiguous", contiguous),
                            ("m_grouped_contiguous_psum", "contiguous_psum", contiguous_psum),
                            ("m_grouped_masked", "masked", masked)):
        for item in items:
            g, n, k, expected = (positive_int(f"export: {kind} {tuple(item)}", x) for x in item)
            check_problem(f"export {kind}", expected, n, k, g)
            cfg, _ = select_config(expected, n, k, g, kind=kind, num_sms=num_sms)
            problems.append({"op": op, "groups": g, "n": n, "k": k, "expected_m": expected,
                             "kernel": _kernel_entry(cfg, kernels, folder)})
    for item in k_grouped:
        what = f"export: k_grouped {tuple(item)}"
        if len(item) != 4:
            raise ValueError(f"{what}: must be (G, M, N, expected_k)")
        g, m, n, expected = (positive_int(what, x) for x in item)
        for name, v in (("M", m), ("N", n)):
            if v % 8:
                raise ValueError(f"{what}: {name} = {v} must be a multiple of 8")
        chunks: list[list[int]] = []
        for size in k_grouped_chunks(g):
            if not any(c[0] == size for c in chunks):
                cfg, _ = select_config(m, n, expected, size, kind="k_grouped", num_sms=num_sms)
                chunks.append([size, _kernel_entry(cfg, kernels, folder)])
        problems.append({"op": "k_grouped_wgrad", "groups": g, "m": m, "n": n, "expected_k": expected,
                         "k": expected, "max_groups": MAX_K_GROUPS, "kernel": chunks[0][1], "chunks": chunks})
    from . import __version__
    for src in casts:
        if src not in CAST_SOURCES:
            raise ValueError(f"export: casts: source dtype must be one of {sorted(CAST_SOURCES)}, got {src!r}")
        for kind in ("token", "block"):
            problems.append({"op": f"per_{kind}_cast", "src": src,
                             "kernel": _cast_entry(kind, CAST_SOURCES[src], kernels, folder)})
    manifest = {"format": FORMAT, "version": VERSION, "fp8gemm_version": __version__, "target": jit.TARGET,
                "ptxas": jit.ptxas_version(jit.find_ptxas()[0]), "heuristic_num_sms": num_sms,
                "arguments": {op: list(a) for op, a in ARGUMENTS.items()}, "values": list(VALUES),
                "group_values": list(GROUP_VALUES),
                "kernels": sorted((dict(v) for v in kernels.values()), key=lambda e: e["index"]),
                "problems": problems}
    for e in manifest["kernels"]:
        del e["index"]
    manifest = json.loads(json.dumps(manifest))           # plain JSON data, as a reader sees it
    validate_manifest(manifest, folder)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if runtime:
        copy_runtime(folder / "runtime")
    return manifest


def copy_runtime(dest: str | Path) -> list[Path]:
    """Copy the C runtime's sources (shipped in the package) into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in RUNTIME_FILES:
        src = resources.files("fp8gemm").joinpath("runtime_c", name)
        with resources.as_file(src) as p:
            shutil.copyfile(p, dest / name)
        out.append(dest / name)
    return out


def validate_manifest(manifest: dict, folder: str | Path | None = None) -> None:
    """Raise ValueError when ``manifest`` breaks the bundle schema (version 1)."""
    from .ptx_templates.spec import evaluate

    def need(cond, what):
        if not cond:
            raise ValueError(f"bundle manifest: {what}")
    need(manifest.get("format") == FORMAT and manifest.get("version") == VERSION, "format/version")
    kernels = manifest.get("kernels")
    need(isinstance(kernels, list) and kernels, "no kernels")
    probe = {v: 4096 for v in VALUES} | {"kb": 32, "groups": 2, "kb_total": 32}
    probe_group = {"k_g": 256, "k_start_g": 512, "kb_start_g": 4, "k_blocks_g": 2}
    for e in kernels:
        spec = e.get("spec", {})
        need(isinstance(e.get("name"), str) and e.get("cubin", "").endswith(".cubin"), "kernel name/cubin")
        if folder is not None:
            need((Path(folder) / e["cubin"]).is_file(), f"missing {e['cubin']}")
        values = dict(probe, block_m=spec["block"].get("block_m", 64), block_n=spec["block"].get("block_n", 64))
        if any(p.get("per_group") for p in spec["params"]):     # arrays of one element per group
            need(isinstance(e.get("config"), dict) and e["config"].get("kind") == "k_grouped"
                 and isinstance(e["config"].get("groups"), int) and e["config"]["groups"] >= 1,
                 f"{e['name']}: per-group parameters need a k_grouped config with its group count")
            values |= probe_group
        if spec.get("grid_dims"):
            need(len(spec["grid_dims"]) == 3 and all(evaluate(x, values) > 0 for x in spec["grid_dims"]),
                 f"{e['name']}: grid_dims")
        else:
            need(evaluate(spec["units"], values) > 0, f"{e['name']}: units")
        maps = {t["param"]: t for t in spec["tensor_maps"]}
        for p in spec["params"]:
            sources = (p["type"] == "tmap") + (p["array"] is not None) + (p["value"] is not None)
            need(sources == 1, f"{e['name']}: parameter {p['name']} needs exactly one source")
            if p["type"] == "tmap":
                t = maps[p["name"]]
                need(len(t["dims"]) == len(t["box"]) == len(t["strides"]) + 1, f"{e['name']}: {p['name']} rank")
                need(bool(t.get("per_group")) == bool(p.get("per_group")), f"{e['name']}: {p['name']} per_group")
                for x in (*t["dims"], *t["strides"], *t["box"], t.get("offset", 0)):
                    evaluate(x, values)
            elif p["value"] is not None:
                evaluate(p["value"], values)
            need(not (p.get("per_group") and p["array"] is not None), f"{e['name']}: {p['name']}: a per-group address")
        need(spec["threads"] > 0 and spec["smem_bytes"] >= 0 and len(spec["cluster"]) == 3, f"{e['name']}: launch")
    for prob in manifest.get("problems", []):
        need(prob.get("op") in ARGUMENTS, f"unknown op {prob.get('op')!r}")
        if prob["op"] in DENSE_OPS.values():
            variant = prob.get("variant", "bf16")              # bundles before the variants: bf16
            need(DENSE_OPS.get(variant) == prob["op"], f"op {prob['op']!r} with variant {variant!r}")
            r = prob["ranges"]
            need(r and r[0][0] == 1 and r[-1][1] == prob["max_m"], "gemm ranges must cover 1..max_m")
            need(all(a[1] + 1 == b[0] for a, b in zip(r, r[1:])), "gemm ranges must be contiguous")
            need(all(0 <= x[2] < len(kernels) for x in r), "gemm range kernel index")
            need(all(isinstance(kernels[x[2]].get("config"), dict)
                     and variant_of(GemmConfig(**kernels[x[2]]["config"])) == variant for x in r),
                 f"a {variant!r} gemm range names a kernel of another variant")
        elif prob["op"] == "k_grouped_wgrad":
            what = f"k_grouped_wgrad problem {prob.get('groups')}x{prob.get('m')}x{prob.get('n')}"
            sizes = ("groups", "m", "n", "expected_k", "max_groups")
            need(all(isinstance(prob.get(x), int) and prob[x] >= 1 for x in sizes), f"{what}: {', '.join(sizes)}")
            need(prob["m"] % 8 == 0 and prob["n"] % 8 == 0, f"{what}: M and N must be multiples of 8")
            need(prob.get("k") == prob["expected_k"], f"{what}: k must be expected_k")
            chunks = prob.get("chunks")
            want = list(dict.fromkeys(k_grouped_chunks(prob["groups"], prob["max_groups"])))
            need(isinstance(chunks, list) and all(isinstance(c, list) and len(c) == 2 for c in chunks)
                 and [c[0] for c in chunks] == want, f"{what}: chunks must name the kernels of {want} groups")
            for size, idx in chunks:
                need(isinstance(idx, int) and 0 <= idx < len(kernels), f"{what}: chunk kernel index")
                cfg = kernels[idx].get("config")
                need(isinstance(cfg, dict) and cfg.get("kind") == "k_grouped" and cfg.get("groups") == size,
                     f"{what}: the kernel of its {size}-group chunks is not a k_grouped kernel of {size} groups")
            need(prob.get("kernel") == chunks[0][1], f"{what}: kernel must be its first chunk's")
        else:
            need(0 <= prob["kernel"] < len(kernels), "grouped kernel index")


def main(argv: list[str] | None = None) -> int:
    """``python -m fp8gemm export DIR --gemm NxK:MAXM ... [--variants bf16,fp32,...] --contiguous GxNxK:E ...
    --masked GxNxK:E --k-grouped GxMxN:EXPECTED_K``"""
    import argparse

    def nums(text, count, sep):
        try:
            head, tail = text.split(":")
            parts = [int(x) for x in head.split("x")] + [int(tail)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {sep}, got {text!r}") from None
        if len(parts) != count:
            raise argparse.ArgumentTypeError(f"expected {sep}, got {text!r}")
        return parts
    p = argparse.ArgumentParser(prog="python -m fp8gemm export", description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--gemm", action="append", default=[], type=lambda t: nums(t, 3, "NxK:MAX_M"))
    p.add_argument("--variants", default="bf16", type=lambda t: [x for x in t.split(",") if x],
                   help=f"comma-separated dense output variants of every --gemm (default bf16; of {','.join(VARIANTS)}: "
                        "fp32 = gemm_fp8_fp8_fp32_nt, bf16_c / fp32_c = with c=, wgrad = wgrad_gemm_fp8_fp8_fp32_nt; "
                        "the k-grouped wgrad is --k-grouped)")
    for kind in ("contiguous", "contiguous-psum", "masked"):
        p.add_argument(f"--{kind}", action="append", default=[], type=lambda t: nums(t, 4, "GxNxK:EXPECTED_M"))
    p.add_argument("--k-grouped", action="append", default=[], type=lambda t: nums(t, 4, "GxMxN:EXPECTED_K"),
                   metavar="GxMxN:EXPECTED_K",
                   help="the k-grouped wgrad GEMM (k_grouped_wgrad_gemm_fp8_fp8_fp32_nt) of G groups of M x N, "
                        f"the kernels picked for EXPECTED_K per group (over {MAX_K_GROUPS} groups: the kernels of "
                        f"{MAX_K_GROUPS} groups and of the remainder)")
    p.add_argument("--casts", action="append", default=[], choices=sorted(CAST_SOURCES),
                   help="include the per-token and per-block casts from this source dtype")
    p.add_argument("--num-sms", type=int, default=132)
    a = p.parse_args(argv)
    try:
        man = export(a.folder, gemm=a.gemm, contiguous=a.contiguous, contiguous_psum=a.contiguous_psum,
                     masked=a.masked, k_grouped=a.k_grouped, casts=a.casts, variants=a.variants, num_sms=a.num_sms)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    print(f"{a.folder}: {len(man['kernels'])} kernels, {len(man['problems'])} problems "
          f"(manifest.json, kernels/, runtime/)")
    return 0
