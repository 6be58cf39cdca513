"""The host <-> kernel contract, produced by a template as plain data.

A ``KernelSpec`` says everything a launcher needs and nothing it must know by heart:
the parameters by name and order with their types, each tensor map (element type, dims,
strides, box, swizzle, and the bytes one pipeline stage expects from it), threads, shared
memory and cluster shape. Sizes that depend on the problem are small expressions over
named problem values (``"k"``, ``"min(block_m, m)"``, ``"sfa_stride * 4"``), so the same
spec can be written out as JSON and evaluated by another runtime later.

Expressions: integer literals, names, ``+ - * //``, and ``min(x, y)``, ``max(x, y)``,
``ceil_div(x, y)``. Nothing else is accepted.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
from typing import Mapping, Union

Expr = Union[int, str]


@dataclasses.dataclass(frozen=True)
class Param:
    """A kernel parameter and where its value comes from: a tensor map (``type == "tmap"``,
    encoded from the ``TensorMap`` of the same name), a launch argument's address
    (``array``), or a problem value (``value``, an expression)."""
    name: str
    type: str                 # "tmap" (CUtensorMap by value, 128 B) | "u64" | "u32"
    doc: str = ""
    array: str | None = None  # launch argument whose device address this is
    value: Expr | None = None  # problem-value expression for scalars
    per_group: bool = False   # an array of one element per group (k_grouped: the values or maps of
                              # each group, from the per-group values k_g, k_start_g, kb_start_g)

    def ptx_type(self, groups: int) -> str:
        """The builder's type: "u32", or "u32[G]" / "tmap[G]" for a per-group array."""
        return f"{self.type}[{groups}]" if self.per_group else self.type


@dataclasses.dataclass(frozen=True)
class TensorMap:
    param: str                       # the kernel parameter it is passed in
    array: str                       # the launch argument whose pointer it describes
    dtype: str                       # element type: uint8 (e4m3 bytes), float32, bfloat16
    dims: tuple[Expr, ...]           # innermost first
    strides: tuple[Expr, ...]        # bytes, for dims[1:]
    box: tuple[Expr, ...]
    swizzle: int                     # 0, 32, 64 or 128 bytes
    stage_bytes: int = 0             # bytes one pipeline stage expects from this map (loads)
    per_group: bool = False          # one map per group (in a "tmap[G]" parameter), each from the
                                     # group's values (k_g, ...) and at ``offset`` bytes into the array
    offset: Expr = 0                 # bytes from the launch argument's pointer to the mapped data

    @property
    def rank(self) -> int:
        return len(self.dims)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    name: str
    kind: str
    params: tuple[Param, ...]
    tensor_maps: tuple[TensorMap, ...]
    threads: int
    smem_bytes: int
    cluster: tuple[int, int, int]
    block: Mapping[str, int]                 # block_m, block_n, block_k, stages, ...
    expect_tx_bytes: int                     # per stage: the sum of the loads' stage_bytes
    grid: str                                # how the launcher sizes the grid, in words
    units: Expr = ""                         # persistent kernels: grid = min(SMs // cluster, units) * cluster
    grid_dims: tuple[Expr, ...] = ()         # other kernels: the grid (x, y, z) itself

    def param_index(self, name: str) -> int:
        for i, p in enumerate(self.params):
            if p.name == name:
                return i
        raise KeyError(f"{self.name} has no parameter {name!r}")

    def tensor_map(self, param: str) -> TensorMap:
        return next(t for t in self.tensor_maps if t.param == param)

    def to_dict(self) -> dict:
        """JSON-ready form (what an ahead-of-time bundle writes out)."""
        return dataclasses.asdict(self) | {"block": dict(self.block)}


_FUNCS = {"min": min, "max": max, "ceil_div": lambda a, b: -(-a // b)}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.FloorDiv: lambda a, b: a // b}


def evaluate(expr: Expr, values: Mapping[str, int]) -> int:
    """The value of a spec expression for one problem (see the module docstring)."""
    if isinstance(expr, int):
        return expr

    def ev(node) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise KeyError(f"spec expression {expr!r}: no value for {node.id!r}")
            return int(values[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and len(node.args) == 2 and not node.keywords):
            return _FUNCS[node.func.id](ev(node.args[0]), ev(node.args[1]))
        raise ValueError(f"spec expression {expr!r}: unsupported syntax")

    return ev(ast.parse(expr, mode="eval").body)


def compiled(expr: Expr):
    """``evaluate`` for one expression, parsed once: a function of the values mapping (the
    launch paths evaluate the same few expressions on every call)."""
    return _compiled(expr) if isinstance(expr, str) else (lambda values, v=int(expr): v)


@functools.lru_cache(maxsize=None)
def _compiled(expr: str):
    def build(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            v = node.value
            return lambda values: v
        if isinstance(node, ast.Name):
            name = node.id

            def get(values):
                try:
                    return int(values[name])
                except KeyError:
                    raise KeyError(f"spec expression {expr!r}: no value for {name!r}") from None
            return get
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            op, left, right = _BINOPS[type(node.op)], build(node.left), build(node.right)
            return lambda values: op(left(values), right(values))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and len(node.args) == 2 and not node.keywords):
            fn, a, b = _FUNCS[node.func.id], build(node.args[0]), build(node.args[1])
            return lambda values: fn(a(values), b(values))
        raise ValueError(f"spec expression {expr!r}: unsupported syntax")
    return build(ast.parse(expr, mode="eval").body)
