"""Decoding of Hopper (sm_90) SASS: 128-bit instructions, low 64-bit word first.

Layout used here (checked against `cuobjdump -sass` of ptxas 13.x output, see the tests):

low word  bits 0-11   opcode: bits 0-8 the operation, bits 9-11 the operand form
                      (which source is a register / immediate / constant / uniform register)
          bits 12-14  guard predicate (7 = PT), bit 15 negates it
          bits 16-23  Rd,  bits 24-31  Ra,  bits 32-39  Rb (register forms) or
          bits 32-63  a 32-bit immediate
high word bits 0-7    Rc (in FFMA's "immediate/uniform C" forms: the B register)
          bits 41-44  stall cycles
          bit  45     yield flag, stored inverted: 0 = the warp MAY yield after this
                      instruction, 1 = no yield (maxas / CuAssembler print "Y" for 0)
          bits 46-48  write (scoreboard) barrier set, 7 = none
          bits 49-51  read barrier set, 7 = none
          bits 52-57  wait mask (barriers 0-5 waited on before issue)
          bits 58-61  operand reuse cache flags: 58 = A, 59 = B, 60 = C (logical operands,
                      whatever field the register is encoded in)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

# 12-bit opcode (low word bits 0-11) -> mnemonic family, as found by compiling PTX that uses
# each instruction with ptxas -arch=sm_90a and matching the raw words to cuobjdump -sass.
_FAMILIES: dict[str, tuple[int, ...]] = {
    "ACQBULK": (0x82E,), "ATOMG": (0x3A9, 0x9A8), "ATOMS": (0x38C,), "BAR": (0xB1D,),
    "BGMMA": (0x9F2,), "BPT": (0x95C,), "BRA": (0x947,), "BREV": (0x301,), "BSSY": (0x945,),
    "BSYNC": (0x941,), "CALL": (0x944,), "CCTL": (0x98F,), "CGAERRBAR": (0x5AB,),
    "CS2R": (0x805,), "DADD": (0xE29,), "DEPBAR": (0x91A,), "DFMA": (0xC2B,), "DMUL": (0x228,),
    "ELECT": (0x82F,), "ERRBAR": (0x9AB,), "EXIT": (0x94D,), "F2F": (0x310, 0xD10),
    "F2FP": (0x23E,), "F2I": (0x305, 0xD11), "FADD": (0x221, 0x421, 0xE21),
    "FCHK": (0x302, 0x902), "FENCE": (0x3C6,), "FFMA": (0x223, 0x423, 0x823, 0xC23, 0xE23),
    "FLO": (0x300,), "FMNMX": (0x209, 0x809), "FMUL": (0x220, 0x820, 0xC20), "FRND": (0x307,),
    "FSEL": (0x208, 0x808), "FSETP": (0x20B, 0x80B), "HADD2": (0x230,), "HFMA2": (0x435,),
    "HGMMA": (0x9F0, 0xDF0), "HMMA": (0x23C,), "I2F": (0xD06,), "I2FP": (0x245, 0xC45),
    "IABS": (0x213,), "IADD3": (0x210, 0x810, 0xC10), "IGMMA": (0x9F1,),
    "IMAD": (0x224, 0x227, 0x424, 0x824, 0x825, 0xC24, 0xC25, 0xE24),
    "ISETP": (0x20C, 0x80C, 0xC0C), "LD": (0x980,), "LDC": (0xB82,), "LDG": (0x981,),
    "LDGDEPBAR": (0x9AF,), "LDGSTS": (0xFAE,), "LDL": (0x983,), "LDS": (0x984,),
    "LDSM": (0x83B,), "LEA": (0x211, 0x811, 0xC11), "LOP3": (0x212, 0x812, 0xC12),
    "MEMBAR": (0x992,), "MOV": (0x202, 0x802, 0xC02), "MUFU": (0x308, 0x908),
    "NANOSLEEP": (0x95D,), "NOP": (0x918,), "P2R": (0x803,), "PLOP3": (0x81C,),
    "POPC": (0x309,), "PREEXIT": (0x82D,), "PRMT": (0x816,), "QGMMA": (0x9F3, 0xDF3),
    "R2UR": (0x2CA,), "REDG": (0x9A6,), "REDUX": (0x3C4,), "RET": (0x950,), "S2R": (0x919,),
    "S2UR": (0x9C3,), "SEL": (0x207, 0x807, 0xC07), "SGXT": (0x81A,),
    "SHF": (0x219, 0x819, 0xC19), "SHFL": (0x589, 0x989, 0xF89), "ST": (0x985,),
    "STG": (0x986,), "STL": (0x387,), "STS": (0x388, 0x988), "STSM": (0x844,),
    "SYNCS": (0x5A7, 0x5B2, 0x9A7), "UBLKRED": (0x3BB,), "UCGABAR_ARV": (0x9C7,),
    "UCGABAR_WAIT": (0xDC7,), "UIADD3": (0x290, 0x890), "ULDC": (0xAB9, 0xABB),
    "ULEA": (0x291,), "UMOV": (0x882, 0xC82), "UPRMT": (0x896,), "USHF": (0x899,),
    "UTMACCTL": (0x9B9,), "UTMACMDFLUSH": (0x9B7,), "UTMALDG": (0x5B4,), "UTMASTG": (0x3B5,),
    "VIADD": (0x836, 0xC36), "VIMNMX": (0x248,), "VOTE": (0x806,), "VOTEU": (0x886,),
    "WARPGROUP": (0x9C5,),
}
OPCODES: dict[int, str] = {op: name for name, ops in _FAMILIES.items() for op in ops}


def _unambiguous_bases() -> dict[int, str]:
    """Bits 0-8 -> family, where every seen form agrees: a fallback for unseen forms."""
    seen: dict[int, set[str]] = {}
    for op, name in OPCODES.items():
        seen.setdefault(op & 0x1FF, set()).add(name)
    return {base: names.pop() for base, names in seen.items() if len(names) == 1}


BASE_OPCODES: dict[int, str] = _unambiguous_bases()

FFMA_OPCODES = frozenset(_FAMILIES["FFMA"])
RZ, URZ, PT = 255, 63, 7

# Bits of the high word the SASS pass may touch.
HI_YIELD_BIT = 45
HI_REUSE_A_BIT, HI_REUSE_B_BIT, HI_REUSE_C_BIT = 58, 59, 60


def mnemonic_class(opcode: int) -> str:
    """Family name of a 12-bit opcode ("FFMA", "LDG", ...); ``OP_0x...`` when unknown."""
    name = OPCODES.get(opcode) or BASE_OPCODES.get(opcode & 0x1FF)
    return name if name else f"OP_0x{opcode:03x}"


def _reg(n: int) -> str:
    return "RZ" if n == RZ else f"R{n}"


def _ureg(n: int) -> str:
    return "URZ" if n == URZ else f"UR{n}"


@dataclass(frozen=True)
class Instr:
    offset: int          # byte offset inside the .text section
    lo: int
    hi: int
    opcode: int          # low word bits 0-11
    mnemonic_class: str

    # ---- generic fields --------------------------------------------------------------
    @property
    def form(self) -> int:
        """Operand-form selector (low bits 9-11): 1 = all-register, 2/4 = immediate, ..."""
        return (self.lo >> 9) & 0x7

    @property
    def predicate(self) -> int:
        return (self.lo >> 12) & 0x7

    @property
    def predicate_negated(self) -> bool:
        return bool((self.lo >> 15) & 1)

    @property
    def rd(self) -> int:
        return (self.lo >> 16) & 0xFF

    @property
    def ra(self) -> int:
        return (self.lo >> 24) & 0xFF

    @property
    def rb(self) -> int:
        return (self.lo >> 32) & 0xFF

    @property
    def rc(self) -> int:
        return self.hi & 0xFF

    @property
    def imm32(self) -> int:
        return (self.lo >> 32) & 0xFFFFFFFF

    # ---- scheduling control (high word) ------------------------------------------------
    @property
    def stall(self) -> int:
        return (self.hi >> 41) & 0xF

    @property
    def yield_flag(self) -> int:
        """The raw bit 45 of the high word: 1 = no yield (the usual), 0 = may yield."""
        return (self.hi >> HI_YIELD_BIT) & 1

    @property
    def yields(self) -> bool:
        return self.yield_flag == 0

    @property
    def write_barrier(self) -> int:
        return (self.hi >> 46) & 0x7

    @property
    def read_barrier(self) -> int:
        return (self.hi >> 49) & 0x7

    @property
    def wait_mask(self) -> int:
        return (self.hi >> 52) & 0x3F

    @property
    def reuse(self) -> int:
        return (self.hi >> 58) & 0xF

    @property
    def reuse_a(self) -> bool:
        return bool((self.hi >> HI_REUSE_A_BIT) & 1)

    @property
    def reuse_b(self) -> bool:
        return bool((self.hi >> HI_REUSE_B_BIT) & 1)

    @property
    def reuse_c(self) -> bool:
        return bool((self.hi >> HI_REUSE_C_BIT) & 1)

    def control_string(self) -> str:
        """CuAssembler-style "reuse:Bwait:Rrd:Wwr:Y:Sstall" text, for reports."""
        reuse = "".join("R" if self.reuse >> i & 1 else "-" for i in range(4))
        wait = "".join(str(i) if self.wait_mask >> i & 1 else "-" for i in range(6))
        rd = "-" if self.read_barrier == 7 else str(self.read_barrier)
        wr = "-" if self.write_barrier == 7 else str(self.write_barrier)
        return f"{reuse}:B{wait}:R{rd}:W{wr}:{'Y' if self.yields else '-'}:S{self.stall:02d}"

    # ---- FFMA --------------------------------------------------------------------------
    @property
    def is_ffma(self) -> bool:
        return self.opcode in FFMA_OPCODES

    @property
    def b_reg(self) -> int | None:
        """FFMA's B operand when it is a vector register, else None.

        The all-register form keeps B in low bits 32-39; the forms whose C is an immediate,
        constant or uniform register move B to the high word's C field (bits 0-7).
        """
        if not self.is_ffma:
            return None
        if self.form == 1:
            return self.rb
        if self.form in (2, 3, 7):
            return self.rc
        return None

    @property
    def c_reg(self) -> int | None:
        if not self.is_ffma:
            return None
        return self.rc if self.form in (1, 4, 5, 6) else None

    def ffma_operands(self) -> tuple[str, str, str, str]:
        """(Rd, A, B, C) as text: "R12", "RZ", "UR4", "imm:0x3f800000" or "c:<raw>"."""
        if not self.is_ffma:
            raise ValueError(f"not an FFMA at 0x{self.offset:x}")
        imm = f"imm:0x{self.imm32:08x}"
        const = f"c:0x{self.imm32:08x}"   # constant-bank forms: not decoded further
        other = {2: imm, 3: const, 4: imm, 5: const, 6: _ureg(self.rb & 0x3F),
                 7: _ureg(self.rb & 0x3F)}.get(self.form, f"?form{self.form}")
        b = _reg(self.b_reg) if self.b_reg is not None else other
        c = _reg(self.c_reg) if self.c_reg is not None else other
        return _reg(self.rd), _reg(self.ra), b, c


def make_instr(offset: int, lo: int, hi: int) -> Instr:
    op = lo & 0xFFF
    return Instr(offset, lo, hi, op, mnemonic_class(op))


def decode(text: bytes) -> list[Instr]:
    """Split a ``.text`` section into 16-byte instructions (low word, then high word)."""
    if len(text) % 16:
        raise ValueError(f".text size {len(text)} is not a multiple of 16")
    out = []
    for off in range(0, len(text), 16):
        lo, hi = struct.unpack_from("<QQ", text, off)
        out.append(make_instr(off, lo, hi))
    return out


def encode(instrs: list[Instr]) -> bytes:
    return b"".join(struct.pack("<QQ", i.lo, i.hi) for i in instrs)
