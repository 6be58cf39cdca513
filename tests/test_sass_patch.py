"""SASS pass tests: real cubins built from small PTX with ptxas, checked against cuobjdump.

CPU only. Tools: the ptxas the JIT uses (jit.find_ptxas);
cuobjdump / nvdisasm as jit.find_cuda_tool finds them. Missing tools skip.
"""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from fp8gemm import jit
from fp8gemm.sass_patch import PASS_VERSION, decode, interleave_ffma, read_cubin
from fp8gemm.sass_patch.cubin import replace_text
from fp8gemm.sass_patch.instr import OPCODES, make_instr
from fp8gemm.sass_patch.interleave import MIN_RUN, _patch_run, ffma_runs

YIELD, REUSE_B = 1 << 45, 1 << 59


# ---- tools ---------------------------------------------------------------------------------
def _find_tool(name: str) -> str | None:
    if name == "ptxas":
        try:
            return str(jit.find_ptxas()[0])
        except FileNotFoundError:
            return None
    tool = jit.find_cuda_tool(name)
    return str(tool) if tool else None


PTXAS, CUOBJDUMP, NVDISASM = (_find_tool(n) for n in ("ptxas", "cuobjdump", "nvdisasm"))
needs_tools = pytest.mark.skipif(PTXAS is None or CUOBJDUMP is None,
                                 reason="needs ptxas and cuobjdump (nvidia-cuda-nvcc / -cuobjdump)")


# ---- PTX sources ---------------------------------------------------------------------------
HEADER = ".version 8.0\n.target sm_90a\n.address_size 64\n"


def promote_ptx(n: int = 32) -> str:
    """A GEMM-like promotion loop: WGMMA (m64 n{2n} k32 e4m3) then acc[i] += d[i] * scale,
    the scale alternating between two registers like DeepGEMM's two rows per thread."""
    d = ",".join(f"%d{i}" for i in range(n))
    lines = [
        ".shared .align 1024 .b8 smem[16384];",
        ".visible .entry promote(.param .u64 pa, .param .u64 ps, .param .u32 iters)",
        "{", "  .reg .b64 %rd<8>;", "  .reg .b32 %r<8>;", "  .reg .pred %p<2>;", "  .reg .b64 %desc;",
        f"  .reg .f32 %acc<{n}>;", f"  .reg .f32 %d<{n}>;", "  .reg .f32 %s<2>;",
        "  ld.param.u64 %rd1, [pa];", "  ld.param.u64 %rd3, [ps];", "  ld.param.u32 %r1, [iters];",
        "  mov.u32 %r2, %tid.x;", "  mul.wide.u32 %rd4, %r2, 4;",
        "  add.s64 %rd1, %rd1, %rd4;", "  add.s64 %rd3, %rd3, %rd4;",
        "  mov.u32 %r4, smem;", "  cvt.u64.u32 %desc, %r4;", "  shr.u64 %desc, %desc, 4;",
    ]
    lines += [f"  mov.f32 %acc{i}, 0f00000000;" for i in range(n)]
    lines += ["  mov.u32 %r3, 0;", "LOOP:",
              "  ld.global.f32 %s0, [%rd3];", "  ld.global.f32 %s1, [%rd3+512];",
              "  add.s64 %rd3, %rd3, 1024;", "  wgmma.fence.sync.aligned;",
              f"  wgmma.mma_async.sync.aligned.m64n{2 * n}k32.f32.e4m3.e4m3 {{{d}}}, %desc, %desc, 0, 1, 1;",
              "  wgmma.commit_group.sync.aligned;", "  wgmma.wait_group.sync.aligned 0;"]
    lines += [f"  fma.rn.f32 %acc{i}, %d{i}, %s{(i // 2) % 2}, %acc{i};" for i in range(n)]
    lines += ["  add.u32 %r3, %r3, 1;", "  setp.lt.u32 %p1, %r3, %r1;", "  @%p1 bra LOOP;"]
    lines += [f"  st.global.f32 [%rd1+{i * 512}], %acc{i};" for i in range(n)]
    lines += ["  ret;", "}"]
    return HEADER + "\n".join(lines) + "\n"


PLAIN_ENTRY = """
.visible .entry plain(.param .u64 pa, .param .u32 n)
.maxntid 128, 1, 1
{
  .reg .b64 %rd<4>;
  .reg .b32 %r<6>;
  ld.param.u64 %rd1, [pa];
  ld.param.u32 %r1, [n];
  mov.u32 %r2, %tid.x;
  mul.wide.u32 %rd2, %r2, 4;
  add.s64 %rd1, %rd1, %rd2;
  ld.global.u32 %r3, [%rd1];
  mad.lo.s32 %r4, %r3, %r1, %r2;
  st.global.u32 [%rd1], %r4;
  ret;
}
"""

# One of each instruction family the decoder must name (and a few FFMA operand forms).
ZOO_PTX = HEADER + """
.shared .align 1024 .b8 smem[4096];
.shared .align 8 .b64 mbar;
.const .align 4 .f32 cst[4] = {0f3F800000, 0f40000000, 0f40400000, 0f40800000};

.visible .entry zoo(.param .u64 pa, .param .u64 pb, .param .u32 n, .param .u32 k)
.reqntid 128, 1, 1
{
  .reg .b64 %rd<16>;
  .reg .b32 %r<16>;
  .reg .f32 %f<40>;
  .reg .pred %p<4>;
  ld.param.u64 %rd1, [pa];
  ld.param.u64 %rd2, [pb];
  ld.param.u32 %r1, [n];
  ld.param.u32 %r9, [k];
  mov.u32 %r2, %tid.x;
  mul.wide.u32 %rd3, %r2, 4;
  add.s64 %rd4, %rd1, %rd3;
  ld.global.f32 %f1, [%rd4];
  ld.global.f32 %f2, [%rd4+512];
  ld.global.f32 %f3, [%rd4+1024];
  mad.lo.s32 %r3, %r2, %r1, 7;
  mul.rn.f32 %f4, %f1, %f2;
  add.f32 %f5, %f4, %f3;
  fma.rn.f32 %f6, %f5, %f1, %f2;
  fma.rn.f32 %f7, %f6, 0f40490FDB, %f3;
  fma.rn.f32 %f7, %f7, %f1, 0f3F800000;
  ld.const.f32 %f30, [cst];
  ld.const.f32 %f31, [cst+4];
  fma.rn.f32 %f7, %f7, %f30, %f2;
  fma.rn.f32 %f7, %f7, %f2, %f31;
  mov.u32 %r4, smem;
  shl.b32 %r5, %r2, 2;
  add.u32 %r6, %r4, %r5;
  st.shared.f32 [%r6], %f7;
  bar.sync 0;
  ld.shared.f32 %f8, [%r6+4];
  mov.u32 %r7, mbar;
  setp.eq.u32 %p1, %r2, 0;
  @%p1 mbarrier.init.shared.b64 [%r7], 1;
  @%p1 mbarrier.arrive.shared.b64 %rd10, [%r7];
  fence.proxy.async;
  wgmma.fence.sync.aligned;
  cvt.u64.u32 %rd11, %r4;
  shr.u64 %rd11, %rd11, 4;
  mov.b32 %f10, 0f00000000; mov.b32 %f11, 0f00000000; mov.b32 %f12, 0f00000000; mov.b32 %f13, 0f00000000;
  mov.b32 %f14, 0f00000000; mov.b32 %f15, 0f00000000; mov.b32 %f16, 0f00000000; mov.b32 %f17, 0f00000000;
  wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 {%f10,%f11,%f12,%f13,%f14,%f15,%f16,%f17}, %rd11, %rd11, 1, 1, 1;
  wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f10,%f11,%f12,%f13,%f14,%f15,%f16,%f17}, %rd11, %rd11, 1, 1, 1, 0, 0;
  wgmma.commit_group.sync.aligned;
  wgmma.wait_group.sync.aligned 0;
  add.f32 %f30, %f10, %f17;
  add.f32 %f9, %f8, %f30;
  setp.lt.u32 %p2, %r3, 100;
  @%p2 bra SKIP;
  add.f32 %f9, %f9, 0f3F800000;
SKIP:
  shfl.sync.bfly.b32 %r8, %r3, 1, 31, -1;
  selp.b32 %r10, %r8, %r3, %p2;
  add.s64 %rd5, %rd2, %rd3;
  st.global.f32 [%rd5], %f9;
  st.global.u32 [%rd5+512], %r10;
  mov.u32 %r12, 0x12345678;
  st.global.u32 [%rd5+1024], %r12;
  mov.u32 %r11, %clock;
  st.global.u32 [%rd5+1536], %r11;
  ret;
}
"""

NO_FFMA_PTX = HEADER + PLAIN_ENTRY


# ---- building and disassembling ------------------------------------------------------------
@pytest.fixture(scope="module")
def cubins(tmp_path_factory):
    if PTXAS is None or CUOBJDUMP is None:
        pytest.skip("needs ptxas and cuobjdump")
    d = tmp_path_factory.mktemp("sass")
    out = {}
    for name, ptx in {"promote": promote_ptx() + PLAIN_ENTRY, "zoo": ZOO_PTX,
                      "no_ffma": NO_FFMA_PTX}.items():
        src, dst = d / f"{name}.ptx", d / f"{name}.cubin"
        src.write_text(ptx)
        proc = subprocess.run([PTXAS, "-arch=sm_90a", "-v", "-o", str(dst), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out[name] = dst.read_bytes()
        out[name + ".log"] = proc.stdout + proc.stderr
    return out


_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*/\*\s*0x([0-9a-f]{16})\s*\*/\s*$")
_HIGH = re.compile(r"^\s*/\*\s*0x([0-9a-f]{16})\s*\*/\s*$")


def sass_dump(data: bytes, tmp_path: Path) -> dict[str, list[tuple[int, str, int, int]]]:
    """cuobjdump -sass, per function: (offset, text, low word, high word)."""
    path = tmp_path / "dump.cubin"
    path.write_bytes(data)
    text = subprocess.run([CUOBJDUMP, "-sass", str(path)], capture_output=True, text=True,
                          check=True).stdout
    funcs: dict[str, list] = {}
    cur, pending = None, None
    for line in text.splitlines():
        if "Function :" in line:
            cur = funcs.setdefault(line.split("Function :")[1].strip(), [])
        elif (m := _INSTR.match(line)) and cur is not None:
            pending = (int(m.group(1), 16), m.group(2).rstrip(" ;"), int(m.group(3), 16))
        elif (m := _HIGH.match(line)) and pending is not None:
            cur.append(pending + (int(m.group(1), 16),))
            pending = None
    return funcs


def text_class(text: str) -> str:
    words = text.split()
    if words[0].startswith("@"):
        words = words[1:]
    return words[0].rstrip(";").split(".")[0]


# ---- ELF reader ----------------------------------------------------------------------------
@needs_tools
def test_read_cubin_kernels_symbols_and_attributes(cubins):
    data = cubins["promote"]
    cub = read_cubin(data)
    assert set(cub.kernels) == {"promote", "plain"}
    for name, k in cub.kernels.items():
        assert k.data == data[k.offset:k.offset + k.size] and k.size % 16 == 0
        sym = next(s for s in cub.symbols if s.name == name)
        assert sym.size == k.size and sym.shndx == k.section_index
        assert cub.sections[k.section_index].name == f".text.{name}"
    # register counts agree with `ptxas -v`
    regs = dict(re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers",
                           cubins["promote.log"], re.S))
    for name in cub.kernels:
        assert cub.kernel_attributes(name)["regcount"] == int(regs[name])
    attrs = cub.kernel_attributes("plain")
    assert attrs["max_threads"] == (128, 1, 1) and attrs["frame_size"] == 0
    assert cub.kernel_attributes("promote")["shared_bytes"] >= 16384
    zoo = read_cubin(cubins["zoo"]).kernel_attributes("zoo")
    assert zoo["reqntid"] == (128, 1, 1) and zoo["num_params"] == 4


@needs_tools
def test_info_attribute_names_match_cuobjdump(cubins, tmp_path):
    for key in ("promote", "zoo"):
        path = tmp_path / f"{key}.cubin"
        path.write_bytes(cubins[key])
        elf = subprocess.run([CUOBJDUMP, "-elf", str(path)], capture_output=True, text=True,
                             check=True).stdout
        for sec in {r.section for r in read_cubin(cubins[key]).info}:
            block = elf.split(f"\n{sec}\n", 1)[1].split("\n.", 1)[0]
            names = re.findall(r"Attribute:\s*(\S.*)", block)
            recs = [r for r in read_cubin(cubins[key]).info if r.section == sec]
            assert len(recs) == len(names), sec
            for rec, name in zip(recs, names):
                if not rec.name.startswith("UNKNOWN"):
                    assert name.strip() == "EIATTR_" + rec.name


def test_replace_text_checks_size(cubins):
    data = cubins["promote"]
    k = read_cubin(data).kernels["plain"]
    flipped = bytes(b ^ 0xFF for b in k.data)
    new = replace_text(data, {"plain": flipped})
    assert len(new) == len(data) and read_cubin(new).kernels["plain"].data == flipped
    assert new[:k.offset] == data[:k.offset] and new[k.offset + k.size:] == data[k.offset + k.size:]
    with pytest.raises(ValueError):
        replace_text(data, {"plain": k.data + bytes(16)})


# ---- instruction decoding ------------------------------------------------------------------
@needs_tools
@pytest.mark.parametrize("key", ["promote", "zoo", "no_ffma"])
def test_decoder_matches_cuobjdump(cubins, tmp_path, key):
    cub = read_cubin(cubins[key])
    dump = sass_dump(cubins[key], tmp_path)
    assert set(dump) == set(cub.kernels)
    for name, k in cub.kernels.items():
        instrs = decode(k.data)
        assert len(instrs) == len(dump[name])
        for ins, (off, text, lo, hi) in zip(instrs, dump[name]):
            assert (ins.offset, ins.lo, ins.hi) == (off, lo, hi)
            assert ins.mnemonic_class == text_class(text), f"{name}+0x{off:x}: {text}"


@needs_tools
def test_zoo_covers_the_families_we_name(cubins):
    seen = {i.mnemonic_class for k in read_cubin(cubins["zoo"]).kernels.values() for i in decode(k.data)}
    want = {"FFMA", "FADD", "FMUL", "IMAD", "MOV", "LDS", "STS", "LDG", "STG", "QGMMA", "HGMMA",
            "BAR", "SYNCS", "BRA", "EXIT", "NOP", "SHFL", "SEL"}
    assert want <= seen, want - seen
    forms = {i.opcode for k in read_cubin(cubins["zoo"]).kernels.values()
             for i in decode(k.data) if i.is_ffma}
    assert len(forms) >= 3 and forms <= {op for op, n in OPCODES.items() if n == "FFMA"}


def _operand(tok: str) -> tuple[str, bool]:
    """'-|R12.reuse|' -> ('R12', True)."""
    reuse = ".reuse" in tok
    return tok.replace(".reuse", "").strip("-|"), reuse


@needs_tools
@pytest.mark.parametrize("key", ["promote", "zoo"])
def test_ffma_operands_match_disassembly(cubins, tmp_path, key):
    cub = read_cubin(cubins[key])
    dump = sass_dump(cubins[key], tmp_path)
    checked = 0
    for name, k in cub.kernels.items():
        for ins, (_, text, _, _) in zip(decode(k.data), dump[name]):
            if not ins.is_ffma:
                continue
            words = text.split(None, 2) if text.startswith("@") else [""] + text.split(None, 1)
            ops = [_operand(t.strip()) for t in words[2].split(",")]
            assert len(ops) == 4, text
            got = ins.ffma_operands()
            for slot, ((want, reuse), have) in enumerate(zip(ops, got)):
                if have.startswith("imm:"):
                    val = struct.unpack("<f", struct.pack("<I", int(have[4:], 16)))[0]
                    assert abs(val) == abs(float(want)), text
                elif have.startswith("c:"):
                    assert want.startswith("c["), text
                else:
                    assert have == want, f"{text}: slot {slot} decoded as {have}"
                if slot:  # reuse flags: bits 58/59/60 belong to A/B/C
                    assert reuse == bool(ins.hi >> (57 + slot) & 1), text
            assert not ins.hi >> 61 & 1
            checked += 1
    assert checked >= (32 if key == "promote" else 4)


# ---- the anchor rule on synthetic FFMAs (no tools needed) ----------------------------------
def _ffma(k: int, b: int, reuse_b: bool, yield_bit: int = 1):
    lo = 0x223 | 7 << 12 | (10 + k) << 16 | 4 << 24 | b << 32
    hi = (10 + k) | 1 << 41 | yield_bit << 45 | 7 << 46 | 7 << 49 | int(reuse_b) << 59
    return make_instr(16 * k, lo, hi)


@pytest.mark.parametrize("regs,reuse,expected", [
    ([0, 0, 0, 0, 3, 3, 3, 3], [1, 1, 1, 0, 1, 1, 1, 0], [0, 2, 4, 6]),
    ([0, 0, 3, 3, 0, 0, 3, 3], [1, 0, 1, 0, 1, 0, 1, 0], [0, 2]),
    ([5] * 8, [0] * 8, []),
])
def test_anchor_rule(regs, reuse, expected):
    run = [_ffma(k, r, bool(u)) for k, (r, u) in enumerate(zip(regs, reuse))]
    changes = _patch_run(run, "anchor")
    assert [k for k, _ in changes] == expected
    for k, new_hi in changes:
        assert new_hi ^ run[k].hi == YIELD | REUSE_B
    # idempotent: apply, run again
    patched = list(run)
    for k, new_hi in changes:
        patched[k] = make_instr(run[k].offset, run[k].lo, new_hi)
    assert _patch_run(patched, "anchor") == []
    yo = _patch_run(run, "yield_only")
    assert [k for k, _ in yo] == expected and all(h ^ run[k].hi == YIELD for k, h in yo)


def test_runs_are_maximal():
    other = make_instr(0, 0x7918, 0)  # NOP
    seq = [_ffma(k, 0, False) for k in range(3)] + [other] + [_ffma(k, 0, False) for k in range(9)]
    assert ffma_runs(seq) == [(0, 3), (4, 9)]


# ---- the pass on real cubins ---------------------------------------------------------------
def _text_owner(cub, pos: int):
    for k in cub.kernels.values():
        if k.offset <= pos < k.offset + k.size:
            return k
    return None


@needs_tools
@pytest.mark.parametrize("mode", ["anchor", "yield_only"])
def test_pass_changes_only_the_claimed_bits(cubins, mode):
    data = cubins["promote"]
    new, report = interleave_ffma(data, mode=mode)
    assert report["pass_version"] == PASS_VERSION and report["changed"] > 0
    assert len(new) == len(data)
    cub = read_cubin(data)
    touched = set()
    for pos in (i for i in range(len(data)) if data[i] != new[i]):
        k = _text_owner(cub, pos)
        assert k is not None, f"byte 0x{pos:x} outside .text changed"
        rel = pos - k.offset
        assert rel % 16 >= 8, "low word changed"
        touched.add((k.name, rel - rel % 16))
    claimed = {(name, c["offset"]) for name, r in report["kernels"].items() for c in r["changes"]}
    assert touched == claimed
    mask = YIELD | REUSE_B if mode == "anchor" else YIELD
    for name, off in claimed:
        old = decode(cub.kernels[name].data[off:off + 16])[0]
        newi = decode(read_cubin(new).kernels[name].data[off:off + 16])[0]
        assert old.is_ffma and old.reuse_b and old.yield_flag == 1
        assert old.lo == newi.lo and old.hi ^ newi.hi == mask
        c = next(c for c in report["kernels"][name]["changes"] if c["offset"] == off)
        assert int(c["old_hi"], 16) == old.hi and int(c["new_hi"], 16) == newi.hi
    r = report["kernels"]["promote"]
    assert r["runs"] >= 2 and all(n >= MIN_RUN for n in r["run_lengths"])
    assert r["before"]["b_reuse"] > 0 and not report["kernels"]["plain"]["changes"]


@needs_tools
@pytest.mark.parametrize("mode", ["anchor", "yield_only"])
def test_pass_is_idempotent(cubins, mode):
    once, r1 = interleave_ffma(cubins["promote"], mode=mode)
    twice, r2 = interleave_ffma(once, mode=mode)
    assert r1["changed"] > 0 and r2["changed"] == 0 and twice == once


@needs_tools
def test_patched_cubin_still_disassembles(cubins, tmp_path):
    new, report = interleave_ffma(cubins["promote"])
    before, after = sass_dump(cubins["promote"], tmp_path), sass_dump(new, tmp_path)
    patched = {c["offset"] for c in report["kernels"]["promote"]["changes"]}
    for (off, t0, _, _), (_, t1, _, _) in zip(before["promote"], after["promote"]):
        parts = t0.split(",")
        if off in patched:  # only B's ".reuse" mark may disappear
            assert parts[2].endswith(".reuse")
            parts[2] = parts[2][:-len(".reuse")]
        assert t1 == ",".join(parts)
    if NVDISASM is None:
        pytest.skip("nvdisasm not found")
    path = tmp_path / "patched.cubin"
    path.write_bytes(new)
    proc = subprocess.run([NVDISASM, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "FFMA" in proc.stdout, proc.stderr


@needs_tools
def test_cubin_without_ffma_runs_is_unchanged(cubins):
    for key in ("no_ffma", "zoo"):
        new, report = interleave_ffma(cubins[key])
        assert new == cubins[key] and report["changed"] == 0
        assert all(r["runs"] == 0 for r in report["kernels"].values())


@needs_tools
def test_fraction_limits_candidates(cubins):
    data = cubins["promote"]
    cub = read_cubin(data)
    runs = {s * 16: n for s, n in ffma_runs(decode(cub.kernels["promote"].data)) if n >= MIN_RUN}
    changed = {}
    for frac in (0.0, 0.25, 9 / 16, 1.0):
        new, report = interleave_ffma(data, fraction=frac)
        offs = {c["offset"] for c in report["kernels"]["promote"]["changes"]}
        for off in offs:  # each change lies in the first floor(len * frac) FFMAs of its run
            start = max(s for s in runs if s <= off)
            assert (off - start) // 16 < int(runs[start] * frac)
        changed[frac] = offs
    assert changed[0.0] == set()
    assert changed[0.25] < changed[9 / 16] < changed[1.0]
    with pytest.raises(ValueError):
        interleave_ffma(data, fraction=1.5)


@needs_tools
def test_alternate_mode_yields_on_every_second_ffma_of_yieldless_runs(cubins):
    data = cubins["promote"]
    new, report = interleave_ffma(data, fraction=1.0, mode="alternate")
    r = report["kernels"]["promote"]
    old_k, new_k = read_cubin(data).kernels["promote"], read_cubin(new).kernels["promote"]
    before, after = decode(old_k.data), decode(new_k.data)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a.hi != b.hi or a.lo != b.lo]
    assert len(changed) == report["changed"] == len(r["changes"]) > 0
    for i in changed:
        a, b = before[i], after[i]
        assert a.is_ffma and a.lo == b.lo and not a.yields and b.yields and not b.reuse_b
        assert (a.hi ^ b.hi) & ~(YIELD | REUSE_B) == 0
    again, r2 = interleave_ffma(new, fraction=1.0, mode="alternate")
    assert r2["changed"] == 0 and again == new
