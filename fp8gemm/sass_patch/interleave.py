"""FFMA yield / register-reuse interleaving (the rule DeepGEMM applies after nvcc).

In the promotion loop of an FP8 GEMM, ptxas emits long runs of
``FFMA acc, wgmma_out, scale.reuse, acc`` with the yield flag off, so a warp holds its
issue slot through the whole run. Giving up B-operand reuse on some of them and letting
the warp yield there lets the other warpgroup's WGMMA issue sooner.

The anchor rule, per run of >= ``MIN_RUN`` consecutive FFMAs, over its first
floor(len * fraction) instructions: an FFMA whose B register carries the reuse flag is
patched when that register has not been B earlier in the run, or when the previous FFMA
still reuses the same B register. Patching XORs the high word with (1<<59)|(1<<45):
the B reuse flag is cleared and the (inverted) yield bit flips, normally 1 -> 0 = yield.

The pass is idempotent: a patched FFMA no longer reuses B, so a second run sees the same
"previous reused" states and patches nothing.
"""
from __future__ import annotations

from fractions import Fraction

from .cubin import read_cubin, replace_text
from .instr import HI_REUSE_B_BIT, HI_YIELD_BIT, Instr, decode, encode, make_instr

PASS_VERSION = 1
MIN_RUN = 8
MODES = ("anchor", "yield_only", "alternate")

_YIELD = 1 << HI_YIELD_BIT
_REUSE_B = 1 << HI_REUSE_B_BIT


def ffma_runs(instrs: list[Instr]) -> list[tuple[int, int]]:
    """(start index, length) of every maximal run of consecutive FFMAs."""
    runs, start = [], None
    for i, ins in enumerate(instrs):
        if ins.is_ffma:
            start = i if start is None else start
        elif start is not None:
            runs.append((start, i - start))
            start = None
    if start is not None:
        runs.append((start, len(instrs) - start))
    return runs


def _candidates(length: int, fraction: Fraction) -> int:
    return length * fraction.numerator // fraction.denominator


def _patch_run(run: list[Instr], mode: str) -> list[tuple[int, int]]:
    """The rule over one run's candidates; returns (index in run, new hi) pairs."""
    if mode == "alternate":
        return _alternate_run(run)
    changes = []
    seen_b: set[int] = set()
    last_reused, last_reg = False, None
    for k, ins in enumerate(run):
        reg = ins.b_reg
        reused = ins.reuse_b
        # yield_only leaves the reuse flag set, so an FFMA it patched is recognised by
        # "reuses B and already yields" and counts as not reusing (as anchor leaves it).
        if mode == "yield_only" and reused and ins.yields:
            reused = False
        if reused and (reg not in seen_b or (last_reused and reg == last_reg)):
            mask = _YIELD | _REUSE_B if mode == "anchor" else _YIELD
            changes.append((k, ins.hi ^ mask))
            reused = False
        if reg is not None:
            seen_b.add(reg)
        last_reused, last_reg = reused, reg
    return changes


def _alternate_run(run: list[Instr]) -> list[tuple[int, int]]:
    """Runs ptxas left without any yield (one-warpgroup kernels): yield on every second FFMA
    and drop its B reuse. Runs that already yield somewhere are left as they are."""
    if any(ins.yields for ins in run):
        return []
    return [(k, (ins.hi ^ _YIELD) & ~_REUSE_B) for k, ins in enumerate(run) if k % 2 == 1]


def _before_counts(ffmas: list[Instr]) -> dict:
    """What ptxas already did to these FFMAs ("does ptxas already interleave?")."""
    return {
        "ffma": len(ffmas),
        "yield": sum(i.yields for i in ffmas),
        "b_reuse": sum(i.reuse_b for i in ffmas),
        "yield_without_b_reuse": sum(i.yields and not i.reuse_b for i in ffmas),
    }


def interleave_ffma(cubin_bytes: bytes, fraction: float = 9 / 16,
                    mode: str = "anchor") -> tuple[bytes, dict]:
    """Apply the pass to every kernel's ``.text``; returns (new cubin, JSON-able report).

    ``fraction``: share of each qualifying run (from its start) that may be patched; 1.0 = all.
    ``mode``: "anchor" (clear B reuse + flip yield) or "yield_only" (flip yield, keep reuse:
    an experiment only -- a warp that yields loses its reuse cache, so the hardware may read
    stale operand-cache contents; never ship it without checking results on a GPU), or
    "alternate" (in runs with no yield at all, yield + no B reuse on every second FFMA).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], not {fraction}")
    frac = Fraction(fraction).limit_denominator(1 << 20)
    data = bytes(cubin_bytes)
    cub = read_cubin(data)
    report: dict = {"pass_version": PASS_VERSION, "mode": mode, "fraction": float(fraction),
                    "min_run": MIN_RUN, "changed": 0, "kernels": {}}
    new_texts: dict[str, bytes] = {}

    for name, text in cub.kernels.items():
        instrs = decode(text.data)
        runs = ffma_runs(instrs)
        long_runs = [(s, n) for s, n in runs if n >= MIN_RUN]
        in_runs = [ins for s, n in long_runs for ins in instrs[s:s + n]]
        changes = []
        for start, length in long_runs:
            cand = instrs[start:start + _candidates(length, frac)]
            for k, new_hi in _patch_run(cand, mode):
                old = instrs[start + k]
                instrs[start + k] = make_instr(old.offset, old.lo, new_hi)
                changes.append({"offset": old.offset, "old_hi": f"0x{old.hi:016x}",
                                "new_hi": f"0x{new_hi:016x}"})
        report["kernels"][name] = {
            "text_file_offset": text.offset,
            "runs": len(long_runs),
            "run_lengths": [n for _, n in long_runs],
            "short_runs": len(runs) - len(long_runs),
            "before": _before_counts(in_runs),
            "changes": changes,
        }
        report["changed"] += len(changes)
        if changes:
            new_texts[name] = encode(instrs)

    if not new_texts:
        return data, report
    return replace_text(data, new_texts), report
