"""Inspect the FP8 GEMM kernel a shape gets, without a GPU: config, PTX, SASS, resources.

(``fp8gemm-dump``, ``python -m fp8gemm.dump``, or ``python tools/dump.py`` in a checkout.)

    fp8gemm-dump --m 4096 --n 7168 --k 16384 --what config
    fp8gemm-dump --m 4096 --n 7168 --k 16384 --what ptx > kernel.ptx
    fp8gemm-dump --m 256 --n 512 --k 1024 --block-m 128 --block-n 128 --stages 4 --what sass
    fp8gemm-dump --m 4096 --n 7168 --k 16384 --what sass --sass-pass on
    fp8gemm-dump --m 4096 --n 7168 --k 16384 --what sass-diff --fraction 1 --mode anchor
    fp8gemm-dump --m 4096 --n 7168 --k 16384 --multicast a --what resources
    fp8gemm-dump --m 4096 --n 7168 --k 16384 --what ffma-report

What each ``--what`` prints:
  config       the config (heuristic or forced), grid, threads, shared memory, kernel name
  ptx          the generated PTX (pipe it to ptxas)
  sass         the final cubin's SASS (after the SASS pass when it is on), each instruction
               followed by its decoded control fields
  sass-diff    every instruction the FFMA interleave pass changes, and the control bits it flips
  resources    ptxas -v figures, .nv.info attributes and instruction counts by class
  ffma-report  what ptxas itself did to the promotion FFMAs: yield / B-reuse counts in runs of
               >= 8 FFMAs of the unpatched kernel (does ptxas already interleave?)

Only ptxas is needed (nvidia-cuda-nvcc wheel or a CUDA toolkit, found as fp8gemm.jit does).
SASS text comes from nvdisasm, else cuobjdump (next to ptxas, in the nvidia-* wheels, or on
PATH), else from fp8gemm's own decoder. Nothing here imports torch or calls the CUDA driver,
so the SM count is ``--num-sms`` (default 132, H100 SXM).

Control fields follow fp8gemm/sass_patch/instr.py: "yield 1" means the warp may yield after
the instruction (Instr.yields), which is a stored 0 in bit 45 of the high word; reuse is the
4-bit field of bits 58-61 (0b0001 = A, 0b0010 = B, 0b0100 = C).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import jit
from .checks import check_problem
from .config import BLOCK_K, KINDS, VARIANTS, GemmConfig, max_stages, heuristic_fields, select_config
from .ptx_templates import gemm as gemm_template
from .sass_patch import decode, interleave_ffma, read_cubin
from .sass_patch.instr import Instr
from .sass_patch.interleave import MIN_RUN, MODES, ffma_runs

WHATS = ("config", "ptx", "sass", "sass-diff", "resources", "ffma-report")
_PASS_DEFAULTS = {p.name: p.default for p in inspect.signature(interleave_ffma).parameters.values()
                  if p.default is not inspect.Parameter.empty}
DEFAULT_FRACTION = _PASS_DEFAULTS.get("fraction", 9 / 16)
DEFAULT_MODE = _PASS_DEFAULTS.get("mode", "anchor")
YIELD_NOTE = ("yield 1 = the warp may yield after the instruction (stored bit 45 of the high word "
              "= 0; fp8gemm/sass_patch/instr.py Instr.yields)")

# Instruction classes for `resources`: (row label, mnemonic families).
CLASSES = (
    ("FFMA", ("FFMA",)),
    ("FADD", ("FADD",)),
    ("FMUL", ("FMUL",)),
    ("GMMA", ("QGMMA", "HGMMA", "IGMMA", "BGMMA")),
    ("BAR", ("BAR", "UCGABAR_ARV", "UCGABAR_WAIT")),
    ("LDS/STS", ("LDS", "STS", "LDSM", "STSM")),
    ("LDG/STG", ("LDG", "STG")),
    ("TMA", ("UTMALDG", "UTMASTG", "UTMACCTL", "UTMACMDFLUSH", "UBLKRED")),
    ("SYNCS/mbarrier", ("SYNCS",)),
    ("branch", ("BRA", "BSSY", "BSYNC", "CALL", "RET", "EXIT")),
)


class UsageError(Exception):
    """Bad arguments found after parsing (reported through argparse, exit status 2)."""


# ---- arguments ---------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fp8gemm-dump", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    shape = p.add_argument_group("problem")
    shape.add_argument("--m", type=_positive, required=True, help="rows of A and D")
    shape.add_argument("--n", type=_positive, required=True, help="rows of B, columns of D")
    shape.add_argument("--k", type=_positive, required=True, help="reduction length")
    shape.add_argument("--kind", choices=KINDS, default="dense", help="layout kind (default dense)")
    shape.add_argument("--groups", type=_positive, default=1, help="groups for grouped kinds (default 1)")
    shape.add_argument("--variant", choices=sorted(VARIANTS), default="bf16",
                       help="output variant of the dense GEMM: bf16 (default), bf16_c (+ C), fp32, fp32_c, "
                            "wgrad (fp32 out += A.B^T, 1x128 B scales); k_grouped is always wgrad")
    shape.add_argument("--num-sms", type=_positive, default=132,
                       help="SMs the heuristic plans for (default 132 = H100 SXM; no GPU is queried)")
    force = p.add_argument_group("forced config (any of these replaces the heuristic's choice; "
                                 "the ones left out come from the heuristic)")
    force.add_argument("--block-m", type=int, help="BM (16, 32, 64, 128 or 256)")
    force.add_argument("--block-n", type=int, help="BN (a multiple of 8 in [16, 256], see config.BLOCK_NS)")
    force.add_argument("--stages", type=int, help="pipeline stages (default: the most that fit, max_stages)")
    force.add_argument("--multicast", choices=("off", "a", "b"),
                       help="2-CTA cluster sharing A or B by TMA multicast, or off")
    p.add_argument("--debug", action="store_true", help="the debug build (bounded mbarrier waits)")
    p.add_argument("--what", choices=WHATS, default="config", help="what to print (default config)")
    sp = p.add_argument_group("SASS pass")
    sp.add_argument("--sass-pass", choices=("default", "on", "off"), default="default",
                    help="for --what sass/resources: apply the FFMA interleave pass or not "
                         "(default: as the JIT does, fp8gemm.jit.ffma_interleave_enabled())")
    sp.add_argument("--fraction", type=_fraction, default=DEFAULT_FRACTION,
                    help=f"interleave_ffma fraction: share of each FFMA run it may patch (default "
                         f"{DEFAULT_FRACTION:g})")
    sp.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                    help=f"interleave_ffma mode (default {DEFAULT_MODE})")
    p.add_argument("--no-cache", action="store_true", help="compile afresh, bypassing the kernel cache")
    return p


# ---- config ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Selection:
    cfg: GemmConfig
    grid: int
    heuristic: GemmConfig        # select_config's choice for the shape
    heuristic_grid: int
    forced: tuple[str, ...]      # the options that overrode the heuristic


def _multicast_tag(cfg: GemmConfig) -> str:
    return cfg.multicast_tag or "off"


def _variant_fields(args) -> dict:
    """GemmConfig fields of the output variant as the library runs it (``heuristic_fields``: wgrad
    with its reduce-add epilogue; k_grouped is always wgrad, with its groups)."""
    if args.kind == "k_grouped":
        return heuristic_fields("wgrad", "k_grouped", args.groups)
    return heuristic_fields(args.variant, args.kind)


def _make_config(bm: int, bn: int, stages: int, multicast: str, debug: bool, fields: dict) -> GemmConfig:
    try:
        return GemmConfig(bm, bn, stages, cluster=1 if multicast == "off" else 2,
                          multicast_on_a=multicast != "b", debug=debug, **fields)
    except ValueError as e:
        raise UsageError(f"invalid config: {e}") from None


def resolve_config(args) -> Selection:
    """The heuristic's config, or the forced one (options left out come from the heuristic)."""
    try:
        check_problem("fp8gemm-dump", args.m, args.n, args.k, args.groups)   # the library's shape rules
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    try:
        fields = _variant_fields(args)
        heur, heur_grid = select_config(args.m, args.n, args.k, args.groups, args.kind, args.num_sms,
                                        variant="wgrad" if args.kind == "k_grouped" else args.variant)
    except (ValueError, TypeError) as e:
        raise UsageError(f"select_config failed: {e}") from None
    given = {"block_m": args.block_m, "block_n": args.block_n, "stages": args.stages,
             "multicast": args.multicast}
    forced = tuple(k for k, v in given.items() if v is not None)
    if not forced:
        cfg = dataclasses.replace(heur, debug=args.debug)
        return Selection(cfg, heur_grid, heur, heur_grid, ())
    bm = args.block_m if args.block_m is not None else heur.block_m
    bn = args.block_n if args.block_n is not None else heur.block_n
    mc = args.multicast if args.multicast is not None else _multicast_tag(heur)
    stages = args.stages
    if stages is None:
        stages = max_stages(bm, bn, args.k, **fields)
        if stages == 0:  # nothing fits: let GemmConfig say why with one stage
            _make_config(bm, bn, 1, mc, args.debug, fields)
            raise UsageError(f"BM={bm} BN={bn} does not fit shared memory with even one stage")
    cfg = _make_config(bm, bn, stages, mc, args.debug, fields)
    return Selection(cfg, cfg.grid(args.m, args.n, args.num_sms, args.groups), heur, heur_grid, forced)


def build_kernel(cfg: GemmConfig):
    """The template's Kernel for ``cfg``; a kind the template cannot build is a usage error."""
    try:
        return gemm_template.build(cfg)
    except (ValueError, NotImplementedError, KeyError, AssertionError) as e:
        raise UsageError(f"the GEMM template cannot build kind={cfg.kind!r} ({cfg.name}): "
                         f"{type(e).__name__}: {e}") from None


def kind_note(cfg: GemmConfig, ptx: str) -> str | None:
    """A warning when a non-dense kind renders the dense kernel body (the template ignores kind)."""
    if cfg.kind == "dense":
        return None
    dense = dataclasses.replace(cfg, kind="dense", groups=0)
    dense_ptx = gemm_template.build(dense).render().replace(dense.name, cfg.name)
    if dense_ptx.replace(repr(dense), repr(cfg)) == ptx:
        return (f"note: the template ignores kind={cfg.kind!r}; this is the dense kernel body "
                f"under the name {cfg.name}")
    return None


# ---- compiling -----------------------------------------------------------------------------
def sass_pass_on(args) -> bool:
    return jit.ffma_interleave_enabled() if args.sass_pass == "default" else args.sass_pass == "on"


def compile_kernel(kern, args, post_pass: bool) -> jit.Compiled:
    try:
        return jit.compile_ptx(kern.render(), kern.name, use_cache=not args.no_cache, post_pass=post_pass)
    except jit.CompileError as e:
        raise SystemExit(f"fp8gemm-dump: {e}") from None


def final_cubin(kern, args) -> tuple[bytes, jit.Compiled, str]:
    """(cubin as the JIT would load it, its Compiled, a line describing the SASS pass)."""
    on = sass_pass_on(args)
    source = "library default" if args.sass_pass == "default" else "--sass-pass"
    custom = (args.fraction, args.mode) != (DEFAULT_FRACTION, DEFAULT_MODE)
    if not on:
        comp = compile_kernel(kern, args, False)
        return comp.cubin, comp, f"SASS pass: off ({source})"
    if not custom:  # exactly the JIT's path
        comp = compile_kernel(kern, args, True)
        return comp.cubin, comp, f"SASS pass: on ({source}; JIT defaults), {_changed(comp.sass_report)}"
    comp = compile_kernel(kern, args, False)
    cubin, report = interleave_ffma(comp.cubin, fraction=args.fraction, mode=args.mode)
    return cubin, comp, (f"SASS pass: on ({source}; fraction={args.fraction:g} mode={args.mode}), "
                         f"{_changed(report)}")


def _changed(report: dict | None) -> str:
    return "report unavailable" if report is None else f"{report.get('changed', '?')} instructions changed"


# ---- disassembly ---------------------------------------------------------------------------
def find_disassembler() -> tuple[str, list[str]] | None:
    """(path, arguments before the cubin file) of nvdisasm or cuobjdump, or None."""
    for name, extra in (("nvdisasm", ["-c"]), ("cuobjdump", ["-sass"])):
        tool = jit.find_cuda_tool(name)
        if tool:
            return str(tool), extra
    return None


def disassemble(cubin: bytes) -> tuple[str, str] | None:
    """(disassembler text of ``cubin``, the tool's path); None when no tool is found or it fails."""
    tool = find_disassembler()
    if tool is None:
        return None
    path, extra = tool
    with tempfile.TemporaryDirectory(prefix="fp8gemm-dump-") as d:
        f = Path(d) / "kernel.cubin"
        f.write_bytes(cubin)
        proc = subprocess.run([path, *extra, str(f)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"warning: {Path(path).name} failed ({proc.stderr.strip()}); using the built-in decoder",
              file=sys.stderr)
        return None
    return proc.stdout, path


_FUNC = re.compile(r"^\s*(?://-+\s+\.text\.(\S+)\s+-+|Function\s*:\s*(\S+))\s*$")
_INSTR_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def instruction_texts(disasm: str) -> dict[str, dict[int, str]]:
    """kernel name -> {offset: "FFMA R1, R2, R3.reuse, R4"} from nvdisasm or cuobjdump text."""
    out: dict[str, dict[int, str]] = {}
    cur = None
    for line in disasm.splitlines():
        if m := _FUNC.match(line):
            cur = out.setdefault(m.group(1) or m.group(2), {})
        elif cur is not None and (m := _INSTR_LINE.match(line)):
            cur[int(m.group(1), 16)] = m.group(2)
    return out


def annotate(disasm: str, cubin: bytes) -> str:
    """The disassembly with each instruction line followed by our decoded control fields."""
    cub = read_cubin(cubin)
    ctrl = {name: {i.offset: i.control_string() for i in decode(k.data)} for name, k in cub.kernels.items()}
    lines, cur = [], {}
    for line in disasm.splitlines():
        if m := _FUNC.match(line):
            cur = ctrl.get(m.group(1) or m.group(2), {})
        elif (m := _INSTR_LINE.match(line)) and int(m.group(1), 16) in cur:
            line = f"{line}  // {cur[int(m.group(1), 16)]}"
        lines.append(line)
    return "\n".join(lines)


def decoder_text(ins: Instr) -> str:
    """Our own one-line rendering of an instruction (family, FFMA operands)."""
    pred = "" if ins.predicate == 7 and not ins.predicate_negated else \
        f"@{'!' if ins.predicate_negated else ''}{'PT' if ins.predicate == 7 else f'P{ins.predicate}'} "
    ops = ""
    if ins.is_ffma:  # mark the reuse flags of register operands A, B, C like the disassemblers
        ops = " " + ", ".join(op + (".reuse" if slot and op.startswith("R") and ins.reuse >> (slot - 1) & 1
                                    else "") for slot, op in enumerate(ins.ffma_operands()))
    return f"{pred}{ins.mnemonic_class}{ops}"


def decoder_listing(cubin: bytes) -> str:
    lines = ["// built-in decoder listing: offset, family [operands], raw low/high words, control"]
    for name, k in read_cubin(cubin).kernels.items():
        lines.append(f"\n// Function : {name}")
        for ins in decode(k.data):
            lines.append(f"  /*{ins.offset:04x}*/  {decoder_text(ins):<40s} "
                         f"0x{ins.lo:016x} 0x{ins.hi:016x}  {ins.control_string()}")
    return "\n".join(lines)


# ---- the modes -----------------------------------------------------------------------------
def show_config(sel: Selection, args, kern) -> None:
    c = sel.cfg
    units = c.units(args.m, args.n, args.groups)
    lay = c.smem_layout
    print(f"shape       m={args.m} n={args.n} k={args.k} groups={args.groups} kind={args.kind} "
          f"num_sms={args.num_sms}")
    src = "heuristic (select_config)" if not sel.forced else \
        f"forced ({', '.join('--' + f.replace('_', '-') for f in sel.forced)}; the rest from the heuristic)"
    print(f"config      {c}")
    print(f"source      {src}")
    print(f"kernel      {kern.name}")
    print(f"tile        BM={c.block_m} BN={c.block_n} BK={BLOCK_K} stages={c.stages} "
          f"cluster={c.cluster} multicast={_multicast_tag(c)} debug={c.debug}")
    print(f"grid        {sel.grid} CTAs for {units} work units "
          f"({units / (sel.grid // c.cluster):.2f} per {'cluster' if c.cluster > 1 else 'CTA'}), "
          f"K blocks {-(-args.k // BLOCK_K)}")
    print(f"threads     {c.threads} = {c.math_warpgroups + 1} warpgroups "
          f"({c.math_warpgroups} math + 1 producer), {c.waves} 64-row slab(s) per math warpgroup")
    print(f"smem        {c.smem_bytes} bytes dynamic ({c.smem_bytes / 1024:.1f} KiB); layout "
          + " ".join(f"{k}@{v}" for k, v in lay.items()))
    spec = gemm_template.spec(c)
    print("params      " + ", ".join(f"{p.name}:{p.type}" for p in spec.params))
    for t in spec.tensor_maps:
        print(f"tensor map  {t.param:9s} {t.array:9s} {t.dtype:8s} dims {t.dims} strides(B) {t.strides} "
              f"box {t.box} swizzle {t.swizzle}" + (f" {t.stage_bytes} B/stage" if t.stage_bytes else ""))
    print(f"expect_tx   {spec.expect_tx_bytes} bytes per stage")
    print(f"heuristic   {_describe(sel.heuristic)} grid={sel.heuristic_grid}"
          + ("  (same as above)" if sel.heuristic == dataclasses.replace(c, debug=False) else ""))
    for name, cfg in (("model cost", c),) + ((("heur. cost", sel.heuristic),) if sel.forced else ()):
        cost = model_cycles(cfg, args)
        if cost is not None:
            print(f"{name:<11s} {cost:,.0f} cycles on the busiest SM (config.tile_cycles x waves)")


def _describe(cfg: GemmConfig) -> str:
    return f"BM={cfg.block_m} BN={cfg.block_n} stages={cfg.stages} multicast={_multicast_tag(cfg)}"


def model_cycles(cfg: GemmConfig, args) -> float | None:
    """The heuristic's cost-model estimate for ``cfg`` (None if config.py has no such model)."""
    try:
        from fp8gemm.config import MULTICAST_MARGIN, ceil_div, tile_cycles
    except ImportError:
        return None
    mc = cfg.multicast_tag
    waves = ceil_div(cfg.units(args.m, args.n, args.groups), args.num_sms // cfg.cluster)
    return waves * tile_cycles(cfg.block_m, cfg.block_n, args.k, mc) * MULTICAST_MARGIN.get(mc, 1.0)


def show_ptx(kern) -> None:
    sys.stdout.write(kern.render())


def show_sass(kern, args) -> None:
    cubin, _, pass_line = final_cubin(kern, args)
    disasm = disassemble(cubin)
    print(f"// {kern.name}: {pass_line}")
    print(f"// control fields appended as reuse:Bwait:Rread:Wwrite:Yield:Sstall; {YIELD_NOTE}")
    if disasm is None:
        print("// no usable nvdisasm/cuobjdump (pip install nvidia-cuda-nvdisasm)")
        print(decoder_listing(cubin))
    else:
        print(f"// disassembler: {disasm[1]}")
        print(annotate(disasm[0], cubin))


def _control_fields(ins: Instr) -> dict[str, str]:
    return {"stall": str(ins.stall), "yield": str(int(ins.yields)),
            "write_bar": str(ins.write_barrier), "read_bar": str(ins.read_barrier),
            "wait": f"0b{ins.wait_mask:06b}", "reuse": f"0b{ins.reuse:04b}"}


def control_diff(old: Instr, new: Instr) -> str:
    """'yield 0->1, reuse 0b0010->0b0000' (and a note if anything outside the control bits moved)."""
    a, b = _control_fields(old), _control_fields(new)
    parts = [f"{k} {a[k]}->{b[k]}" for k in a if a[k] != b[k]]
    ctrl_mask = ((1 << 64) - 1) ^ ((1 << 41) - 1)  # high-word bits 41-63
    if old.lo != new.lo or (old.hi ^ new.hi) & ~ctrl_mask:
        parts.append(f"ENCODING lo 0x{old.lo:016x}->0x{new.lo:016x} hi 0x{old.hi:016x}->0x{new.hi:016x}")
    elif (old.hi ^ new.hi) >> 62:
        parts.append(f"hi bits 62-63 0b{old.hi >> 62:02b}->0b{new.hi >> 62:02b}")
    return ", ".join(parts)


def _run_of(runs: list[tuple[int, int]], index: int) -> tuple[int, int] | None:
    """The FFMA run (start, length) holding instruction ``index``."""
    pos = bisect.bisect_right([s for s, _ in runs], index) - 1
    if pos >= 0 and runs[pos][0] <= index < runs[pos][0] + runs[pos][1]:
        return runs[pos]
    return None


def show_sass_diff(kern, args) -> None:
    base = compile_kernel(kern, args, False).cubin
    patched, report = interleave_ffma(base, fraction=args.fraction, mode=args.mode)
    texts = instruction_texts(disasm[0]) if (disasm := disassemble(base)) is not None else {}
    print(f"// {kern.name}: interleave_ffma(fraction={args.fraction:g}, mode={args.mode}) on the "
          f"unpatched cubin; instruction text as before the pass; {YIELD_NOTE}")
    old_cub, new_cub = read_cubin(base), read_cubin(patched)
    total, runs_hit = 0, 0
    for name, k in old_cub.kernels.items():
        old, new = decode(k.data), decode(new_cub.kernels[name].data)
        runs = ffma_runs(old)
        long_runs = [r for r in runs if r[1] >= MIN_RUN]
        changed = [i for i, (a, b) in enumerate(zip(old, new)) if (a.lo, a.hi) != (b.lo, b.hi)]
        print(f"kernel {name}: {len(long_runs)} FFMA runs of >= {MIN_RUN} "
              f"(lengths {[n for _, n in long_runs]})")
        last_run = None
        for i in changed:
            run = _run_of(runs, i)
            if run != last_run and run is not None:
                print(f"run at 0x{run[0] * 16:04x}, {run[1]} FFMAs:")
                runs_hit += 1
            last_run = run
            text = texts.get(name, {}).get(old[i].offset) or decoder_text(old[i])
            print(f"  0x{old[i].offset:04x}  {text:<44s} {control_diff(old[i], new[i])}")
        total += len(changed)
    if total == 0:
        print("the pass changed nothing")
    if total != report.get("changed", total):
        print(f"warning: the pass reported {report['changed']} changes, the byte diff shows {total}")
    print(f"{total} instructions changed in {runs_hit} FFMA runs")


def count_classes(instrs: list[Instr]) -> tuple[list[tuple[str, int, collections.Counter]],
                                                collections.Counter]:
    """Per CLASSES row: (label, count, families); plus the families left in 'other'."""
    fam = collections.Counter(i.mnemonic_class for i in instrs)
    rows = []
    for label, names in CLASSES:
        sub = collections.Counter({n: fam.pop(n) for n in names if n in fam})
        rows.append((label, sum(sub.values()), sub))
    return rows, fam


def show_resources(sel: Selection, kern, args) -> None:
    cubin, comp, pass_line = final_cubin(kern, args)
    cub = read_cubin(cubin)
    print(f"kernel          {kern.name}  ({pass_line})")
    for name, k in cub.kernels.items():
        attrs = cub.kernel_attributes(name)
        print_limits(comp.resources, attrs, sel.cfg, name)
        instrs = decode(k.data)
        print(f"text            {k.size} B, {len(instrs)} instructions, "
              f"{len(attrs.get('exit_offsets', ()))} EXITs listed in .nv.info")
        print_class_counts(instrs)


def print_limits(res: jit.Resources, attrs: dict, cfg: GemmConfig, name: str) -> None:
    """Registers, shared memory, spills, stack, barriers, threads: ptxas -v next to .nv.info."""
    section_smem = attrs.get("shared_bytes", 0)
    a = attrs.get
    print(f"registers       {res.registers} (ptxas -v); .nv.info REGCOUNT {a('regcount', '?')}, "
          f"MAXREG_COUNT {a('maxreg_count', '?')}")
    print(f"shared memory   static {res.static_smem} B (ptxas -v), .nv.shared.{name} section "
          f"{section_smem} B; dynamic {cfg.smem_bytes} B (config); "
          f"total {max(res.static_smem, section_smem) + cfg.smem_bytes} B")
    print(f"spills          {res.spill_stores} B stores, {res.spill_loads} B loads")
    print(f"stack frame     {res.stack_frame} B (.nv.info FRAME_SIZE {a('frame_size', '?')})")
    print(f"barriers        {res.barriers} named (ptxas -v), NUM_BARRIERS {a('num_barriers', '?')}, "
          f"NUM_MBARRIERS {a('num_mbarriers', '?')}")
    reqntid = f", REQNTID {_dims(attrs['reqntid'])}" if "reqntid" in attrs else ""
    print(f"max threads     {_dims(a('max_threads'))} (.nv.info MAX_THREADS; config {cfg.threads}){reqntid}")
    if cfg.cluster > 1 or "cta_per_cluster" in attrs:
        declared = (f"CTA_PER_CLUSTER {_dims(a('cta_per_cluster'))}" if "cta_per_cluster" in attrs
                    else "no CTA_PER_CLUSTER in .nv.info (cluster shape set at launch)")
        print(f"cluster         {cfg.cluster} CTAs (config); {declared}, "
              f"EXPLICIT_CLUSTER {a('explicit_cluster', False)}")


def print_class_counts(instrs: list[Instr]) -> None:
    rows, other = count_classes(instrs)
    print("instructions by class:")
    for label, n, sub in rows:
        detail = ", ".join(f"{f} {c}" for f, c in sub.most_common())
        print(f"  {label:<15s} {n:6d}" + (f"   ({detail})" if sub and list(sub) != [label] else ""))
    top = ", ".join(f"{f} {c}" for f, c in other.most_common(12))
    more = ", ..." if len(other) > 12 else ""
    print(f"  {'other':<15s} {sum(other.values()):6d}   ({top}{more})")


def _dims(v) -> str:
    return "x".join(str(x) for x in v) if v else "?"


def is_alternating(run: list[Instr]) -> bool:
    """The anchor's look: at least two yielding FFMAs and never two yielding FFMAs in a row."""
    ys = [i.yields for i in run]
    return sum(ys) >= 2 and not any(a and b for a, b in zip(ys, ys[1:]))


def long_runs(instrs: list[Instr]) -> list[list[Instr]]:
    return [instrs[s:s + n] for s, n in ffma_runs(instrs) if n >= MIN_RUN]


def verdict(before: dict, runs: list[list[Instr]], alternating: int) -> str:
    if not runs:
        return f"n/a: no runs of >= {MIN_RUN} FFMAs (the pass has nothing to patch)"
    if before["yield"] == 0:
        return "no: no FFMA in these runs has yield set"
    if alternating == len(runs):
        return "yes: every run alternates yields (on the FFMAs without B reuse)"
    return f"partly: {before['yield']} yields, {alternating} of {len(runs)} runs alternate"


def show_ffma_report(kern, args) -> None:
    cubin = compile_kernel(kern, args, False).cubin
    ptxas, _ = jit.find_ptxas()
    # The pass's own report counts what ptxas did (its "before"), and what the rule would change.
    report = interleave_ffma(cubin, fraction=1.0, mode=DEFAULT_MODE)[1]["kernels"]
    report_default = interleave_ffma(cubin, fraction=DEFAULT_FRACTION, mode=DEFAULT_MODE)[1]["kernels"]
    print(f"kernel {kern.name}, UNPATCHED (ptxas {jit.ptxas_version(ptxas)}, "
          f"flags {' '.join(jit.PTXAS_FLAGS)})")
    print(f"convention: {YIELD_NOTE}; 'B reuse' = high-word bit 59 on the FFMA's B operand "
          f"(the scale register in the promotion)")
    for name, k in read_cubin(cubin).kernels.items():
        instrs = decode(k.data)
        ffmas = [i for i in instrs if i.is_ffma]
        runs = long_runs(instrs)
        rep, before = report[name], report[name]["before"]
        alternating = sum(map(is_alternating, runs))
        print(f"[{name}]")
        print(f"FFMAs in kernel:                       {len(ffmas)}")
        print(f"  with yield on (whole kernel):        {sum(i.yields for i in ffmas)}")
        print(f"runs of >= {MIN_RUN} FFMAs:                    {rep['runs']}  "
              f"(lengths {', '.join(map(str, rep['run_lengths'])) or '-'})")
        print(f"  FFMAs in those runs:                 {before['ffma']}")
        print(f"  with yield on:                       {before['yield']}")
        print(f"  with B reuse on (scale register):    {before['b_reuse']}")
        print(f"  with B reuse off:                    {before['ffma'] - before['b_reuse']}")
        print(f"  yield on and B reuse off:            {before['yield_without_b_reuse']}")
        print(f"  runs with any yield:                 {sum(any(i.yields for i in r) for r in runs)}")
        print(f"  alternating-pattern runs:            {alternating}  (>= 2 yields, never two in a row)")
        print(f"shorter FFMA runs (< {MIN_RUN}):               {rep['short_runs']}  "
              f"(holding {len(ffmas) - before['ffma']} FFMAs)")
        print(f"anchor rule would change:              {len(report_default[name]['changes'])}  "
              f"(fraction {DEFAULT_FRACTION:g}; {len(rep['changes'])} with fraction 1)")
        print(f"ptxas already interleaves?             {verdict(before, runs, alternating)}")


# ---- entry point ---------------------------------------------------------------------------
def run(args) -> None:
    sel = resolve_config(args)
    kern = build_kernel(sel.cfg)
    if note := kind_note(sel.cfg, kern.render()):
        print(note, file=sys.stderr)
    if args.what == "config":
        show_config(sel, args, kern)
    elif args.what == "ptx":
        show_ptx(kern)
    elif args.what == "sass":
        show_sass(kern, args)
    elif args.what == "sass-diff":
        show_sass_diff(kern, args)
    elif args.what == "resources":
        show_resources(sel, kern, args)
    elif args.what == "ffma-report":
        show_ffma_report(kern, args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except UsageError as e:
        parser.error(str(e))
    return 0


def console_main() -> int:
    """The ``fp8gemm-dump`` console script and ``python -m fp8gemm.dump``."""
    try:
        return main()
    except BrokenPipeError:  # piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(console_main())
