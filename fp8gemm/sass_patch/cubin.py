"""A small pure-Python reader for the ELF64 cubins that ``ptxas`` writes.

Only what the SASS pass and its reports need: section headers and names, ``.symtab``,
each kernel's ``.text.<name>`` bytes, and the ``.nv.info`` attribute records (EIATTR).
``replace_text`` returns a copy of the file with some ``.text`` contents swapped (same size),
so everything else in the ELF stays byte-identical.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

# ---- ELF constants -------------------------------------------------------------------------
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB = 2, 1
SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 2, 3, 8
SHT_CUDA_INFO = 0x70000000  # type of .nv.info / .nv.info.<kernel> (LOPROC + 0)

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")

# ---- EIATTR records ------------------------------------------------------------------------
# Record formats (first byte of each record).
EIFMT_NVAL, EIFMT_BVAL, EIFMT_HVAL, EIFMT_SVAL = 1, 2, 3, 4
FORMAT_NAMES = {1: "NVAL", 2: "BVAL", 3: "HVAL", 4: "SVAL"}

# Attribute ids (second byte). Ids marked "seen" were checked against the names that
# `cuobjdump -elf` prints for cubins built by ptxas 13.x; the rest come from public
# tables (CuAssembler's CuNVInfo, envytools notes) and are best effort.
EIATTR_NAMES = {
    0x01: "PAD",
    0x02: "IMAGE_SLOT",
    0x03: "JUMPTABLE_RELOCS",
    0x04: "CTAIDZ_USED",
    0x05: "MAX_THREADS",            # seen (.maxntid)
    0x06: "IMAGE_OFFSET",
    0x07: "IMAGE_SIZE",
    0x08: "TEXTURE_NORMALIZED",
    0x09: "SAMPLER_INIT",
    0x0A: "PARAM_CBANK",            # seen
    0x0B: "SMEM_PARAM_OFFSETS",
    0x0C: "CBANK_PARAM_OFFSETS",
    0x0D: "SYNC_STACK",
    0x0E: "TEXID_SAMPID_MAP",
    0x0F: "EXTERNS",
    0x10: "REQNTID",                # seen (.reqntid)
    0x11: "FRAME_SIZE",             # seen
    0x12: "MIN_STACK_SIZE",         # seen
    0x13: "SAMPLER_FORCE_UNNORMALIZED",
    0x14: "BINDLESS_IMAGE_OFFSETS",
    0x15: "BINDLESS_TEXTURE_BANK",
    0x16: "BINDLESS_SURFACE_BANK",
    0x17: "KPARAM_INFO",            # seen
    0x18: "SMEM_PARAM_SIZE",
    0x19: "CBANK_PARAM_SIZE",       # seen
    0x1A: "QUERY_NUMATTRIB",
    0x1B: "MAXREG_COUNT",           # seen
    0x1C: "EXIT_INSTR_OFFSETS",     # seen
    0x1D: "S2RCTAID_INSTR_OFFSETS",
    0x1E: "CRS_STACK_SIZE",         # seen
    0x1F: "NEED_CNP_WRAPPER",
    0x20: "NEED_CNP_PATCH",
    0x21: "EXPLICIT_CACHING",
    0x22: "ISTYPEP_USED",
    0x23: "MAX_STACK_SIZE",
    0x24: "SUQ_USED",
    0x25: "LD_CACHEMOD_INSTR_OFFSETS",
    0x26: "LOAD_CACHE_REQUEST",
    0x27: "ATOM_SYS_INSTR_OFFSETS",
    0x28: "COOP_GROUP_INSTR_OFFSETS",  # seen
    0x29: "COOP_GROUP_MASK_REGIDS",    # seen
    0x2A: "SW1850030_WAR",
    0x2B: "WMMA_USED",
    0x2C: "HAS_PRE_V10_OBJECT",
    0x2D: "ATOMF16_EMUL_INSTR_OFFSETS",
    0x2E: "ATOM16_EMUL_INSTR_REG_MAP",
    0x2F: "REGCOUNT",               # seen
    0x30: "SW2393858_WAR",
    0x31: "INT_WARP_WIDE_INSTR_OFFSETS",  # seen
    0x32: "SHARED_SCRATCH",
    0x33: "STATISTICS",
    0x34: "INDIRECT_BRANCH_TARGETS",
    0x35: "SW2861232_WAR",
    0x36: "SW_WAR",                 # seen
    0x37: "CUDA_API_VERSION",       # seen
    0x38: "NUM_MBARRIERS",          # seen
    0x39: "MBARRIER_INSTR_OFFSETS",  # seen
    0x3A: "COROUTINE_RESUME_ID_OFFSETS",
    0x3B: "SAM_REGION_STACK_SIZE",
    0x3C: "PER_REG_TARGET_PERF_STATS",
    0x3D: "CTA_PER_CLUSTER",        # seen (.reqnctapercluster)
    0x3E: "EXPLICIT_CLUSTER",       # seen (.explicitcluster)
    0x3F: "MAX_CLUSTER_RANK",       # seen (.maxclusterrank)
    0x40: "INSTR_REG_MAP",
    0x41: "RESERVED_SMEM_USED",
    0x42: "RESERVED_SMEM_0_SIZE",
    0x43: "UCODE_SECTION_DATA",
    0x44: "UNUSED_LOAD_BYTE_OFFSET",
    0x45: "KPARAM_INFO_V2",
    0x46: "SYSCALL_OFFSETS",
    0x47: "SW_WAR_MEMBAR_SYS_INSTR_OFFSETS",
    0x48: "GRAPHICS_GLOBAL_CBANK",
    0x49: "SHADER_TYPE",
    0x4A: "VRC_CTA_INIT_COUNT",
    0x4B: "TOOLS_PATCH_FUNC",
    0x4C: "NUM_BARRIERS",           # seen
    0x4D: "TEXMODE_INDEPENDENT",
    0x4E: "PERF_STATISTICS",
    0x4F: "AT_ENTRY_FRAGMENTS",
    0x50: "SPARSE_MMA_MASK",        # seen
    0x51: "TCGEN05_1CTA_USED",
    0x52: "TCGEN05_2CTA_USED",
    0x53: "GEN_ERRBAR_AT_EXIT",
    0x54: "REG_RECONFIG",
    0x55: "ANNOTATIONS",
    0x56: "SANITIZE",
    0x57: "STACK_CANARY_TRAP_OFFSETS",
    0x58: "STUB_FUNCTION_KIND",
    0x59: "LOCAL_CTA_ASYNC_STORE_OFFSETS",
    0x5A: "MERCURY_FINALIZER_OPTIONS",
    # 0x5f (HVAL 0x101 in every ptxas 13.x kernel) is printed as "unknown Attribute" by cuobjdump.
    0x66: "LANGUAGE",               # seen
    0x6B: "NVSAL_SW_WAR",           # seen
    0x6D: "PREEXIT_USED",           # seen
}

# Attributes in the global .nv.info whose 8-byte SVAL payload is (symbol index, u32 value).
_PER_FUNCTION_U32 = {"REGCOUNT", "FRAME_SIZE", "MIN_STACK_SIZE", "MAX_STACK_SIZE",
                     "CRS_STACK_SIZE", "SAM_REGION_STACK_SIZE"}


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int


@dataclass(frozen=True)
class Symbol:
    index: int
    name: str
    value: int
    size: int
    info: int
    other: int
    shndx: int

    @property
    def bind(self) -> int:
        return self.info >> 4

    @property
    def type(self) -> int:
        return self.info & 0xF


@dataclass(frozen=True)
class KernelText:
    """One ``.text.<name>`` section: where its SASS lies in the file."""
    name: str
    section_index: int
    offset: int
    size: int
    data: bytes


@dataclass(frozen=True)
class InfoAttr:
    """One EIATTR record of a ``.nv.info*`` section."""
    section: str
    offset: int          # file offset of the record
    fmt: int
    attr: int
    size: int            # payload bytes (SVAL) or 0
    value: object        # int (BVAL/HVAL), bytes (SVAL) or None (NVAL)

    @property
    def name(self) -> str:
        return EIATTR_NAMES.get(self.attr, f"UNKNOWN_0x{self.attr:02x}")

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES.get(self.fmt, f"FMT_{self.fmt}")

    def words(self) -> tuple[int, ...]:
        """An SVAL payload read as little-endian u32s (empty for other formats)."""
        if not isinstance(self.value, bytes):
            return ()
        n = len(self.value) // 4
        return struct.unpack_from(f"<{n}I", self.value)


@dataclass
class Cubin:
    data: bytes
    sections: list[Section]
    symbols: list[Symbol]
    kernels: dict[str, KernelText]
    info: list[InfoAttr] = field(default_factory=list)

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_bytes(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        return self.data[sec.offset:sec.offset + sec.size]

    def kernel_attributes(self, name: str) -> dict:
        """The attributes worth showing for one kernel, decoded into plain values."""
        out: dict = {}
        sym_index = next((s.index for s in self.symbols if s.name == name), None)
        for rec in self.info:
            if rec.section == ".nv.info":
                w = rec.words()
                if rec.name in _PER_FUNCTION_U32 and len(w) == 2 and w[0] == sym_index:
                    out[rec.name.lower()] = w[1]
            elif rec.section == f".nv.info.{name}":
                _decode_kernel_attr(rec, out)
        shared = self.section(f".nv.shared.{name}")
        if shared is not None:
            out["shared_bytes"] = shared.size  # static shared memory (a NOBITS section)
        local = self.section(f".nv.local.{name}")
        if local is not None:
            out["local_bytes"] = local.size
        return out


def _decode_kernel_attr(rec: InfoAttr, out: dict) -> None:
    w = rec.words()
    n = rec.name
    if n in ("MAX_THREADS", "REQNTID", "CTA_PER_CLUSTER") and len(w) == 3:
        out[n.lower()] = w
    elif n in ("MAXREG_COUNT", "CBANK_PARAM_SIZE", "NUM_MBARRIERS", "NUM_BARRIERS",
               "SPARSE_MMA_MASK") and isinstance(rec.value, int):
        out[n.lower()] = rec.value
    elif n in ("MAX_CLUSTER_RANK", "CRS_STACK_SIZE", "SHARED_SCRATCH") and len(w) == 1:
        out[n.lower()] = w[0]
    elif n == "EXIT_INSTR_OFFSETS":
        out["exit_offsets"] = w
    elif n == "PARAM_CBANK" and len(w) == 2:
        # (constant-bank section symbol, offset | size << 16)
        out["param_cbank_offset"], out["param_cbank_size"] = w[1] & 0xFFFF, w[1] >> 16
    elif n == "KPARAM_INFO":
        out["num_params"] = out.get("num_params", 0) + 1
    elif n == "EXPLICIT_CLUSTER":
        out["explicit_cluster"] = True


# ---- parsing -------------------------------------------------------------------------------
def _cstr(table: bytes, off: int) -> str:
    end = table.find(b"\0", off)
    return table[off:end if end >= 0 else len(table)].decode("utf-8", "replace")


def _parse_info(sec_name: str, base: int, blob: bytes) -> list[InfoAttr]:
    recs, pos = [], 0
    while pos + 4 <= len(blob):
        fmt, attr, half = struct.unpack_from("<BBH", blob, pos)
        if fmt == EIFMT_SVAL:
            payload = blob[pos + 4:pos + 4 + half]
            recs.append(InfoAttr(sec_name, base + pos, fmt, attr, half, payload))
            pos += 4 + half
        else:
            value = None if fmt == EIFMT_NVAL else (half & 0xFF if fmt == EIFMT_BVAL else half)
            recs.append(InfoAttr(sec_name, base + pos, fmt, attr, 0, value))
            pos += 4
    return recs


def read_cubin(data: bytes) -> Cubin:
    """Parse a little-endian ELF64 cubin. Raises ValueError on anything else."""
    data = bytes(data)
    if len(data) < _EHDR.size or data[:4] != _ELF_MAGIC:
        raise ValueError("not an ELF file")
    if data[4] != _ELFCLASS64 or data[5] != _ELFDATA2LSB:
        raise ValueError("not a little-endian ELF64 file")
    (_, _, _, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = _EHDR.unpack_from(data, 0)
    if shoff == 0 or shnum == 0:
        raise ValueError("ELF file has no section headers")
    if shentsize != _SHDR.size or shoff + shnum * shentsize > len(data):
        raise ValueError("ELF section header table is malformed")

    raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names_sec = raw[shstrndx]
    names = data[names_sec[4]:names_sec[4] + names_sec[5]]
    sections = []
    for i, (nm, typ, flags, _addr, off, size, link, info, align, entsize) in enumerate(raw):
        if typ != SHT_NOBITS and off + size > len(data):
            raise ValueError(f"section {i} runs past the end of the file")
        sections.append(Section(i, _cstr(names, nm), typ, flags, off, size, link, info, align, entsize))

    symbols: list[Symbol] = []
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is not None:
        strtab = sections[symtab.link]
        strs = data[strtab.offset:strtab.offset + strtab.size]
        for i in range(symtab.size // _SYM.size):
            nm, info, other, shndx, value, size = _SYM.unpack_from(data, symtab.offset + i * _SYM.size)
            symbols.append(Symbol(i, _cstr(strs, nm), value, size, info, other, shndx))

    kernels = {}
    for s in sections:
        if s.name.startswith(".text.") and s.type != SHT_NOBITS:
            name = s.name[len(".text."):]
            kernels[name] = KernelText(name, s.index, s.offset, s.size, data[s.offset:s.offset + s.size])

    info: list[InfoAttr] = []
    for s in sections:
        if s.type == SHT_CUDA_INFO and (s.name == ".nv.info" or s.name.startswith(".nv.info.")):
            info += _parse_info(s.name, s.offset, data[s.offset:s.offset + s.size])
    return Cubin(data, sections, symbols, kernels, info)


def replace_text(data: bytes, new_texts: dict[str, bytes]) -> bytes:
    """A copy of ``data`` with the ``.text.<name>`` contents replaced (each the same size)."""
    cub = read_cubin(data)
    out = bytearray(data)
    for name, text in new_texts.items():
        k = cub.kernels.get(name)
        if k is None:
            raise KeyError(f"no .text section for kernel {name!r}")
        if len(text) != k.size:
            raise ValueError(f".text.{name}: replacement is {len(text)} bytes, section is {k.size}")
        out[k.offset:k.offset + k.size] = text
    return bytes(out)
