"""Plans: a compiled kernel bound to one problem, filled in from the template's spec.

A ``KernelPlan`` compiles (or loads) the kernel for a config, sizes its launch, and fills
every parameter from the ``KernelSpec``: scalars from the problem values, tensor maps
encoded from the map descriptions, addresses from the launch arguments. The host restates
nothing the template decided. ``launch`` only writes the addresses that changed (and
re-encodes the tensor maps that describe them) before the driver call.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import struct
import threading
from typing import Mapping, Sequence

from . import launcher, runtime
from .config import GemmConfig, get_num_sms
from .ptx_templates import gemm as template
from .ptx_templates.spec import KernelSpec, TensorMap, evaluate


def debug_default() -> bool:
    return os.environ.get("FP8GEMM_DEBUG", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def kernel_spec(cfg: GemmConfig) -> KernelSpec:
    return template.spec(cfg)


_resident: dict[tuple, int] = {}


def _resident_clusters(kernel: launcher.Launch, cfg: GemmConfig) -> int:
    key = (id(kernel.fn), cfg)
    if key not in _resident:
        _resident[key] = max(1, launcher.max_active_clusters(kernel))
    return _resident[key]


class _Binder:
    """Where one launch argument's address goes: tensor maps to encode, pointer slots."""
    __slots__ = ("maps", "slots")

    def __init__(self):
        self.maps: list[tuple[int, TensorMap, tuple, tuple, tuple]] = []
        self.slots: list[int] = []


class KernelPlan:
    """A kernel for one config and one problem. ``values`` are the problem values the
    spec's expressions use (m, n, k, groups, kb, strides in elements, ...); ``arguments``
    names the launch arguments in the order ``launch`` takes them."""

    arguments: tuple[str, ...] = ()

    def __init__(self, config: GemmConfig, grid: int, values: Mapping[str, int], *, device: int = 0,
                 debug: bool | None = None, sass_pass: bool | None = None):
        debug = debug_default() if debug is None else debug
        if debug and not config.debug:
            config = dataclasses.replace(config, debug=True)
        self.config, self.grid, self.device = config, grid, device
        self.spec = spec = kernel_spec(config)
        cfg = config
        self.fn, self.compiled = runtime.get_function(("gemm", cfg), lambda: template.build(cfg), device,
                                                      spec.smem_bytes, post_pass=sass_pass)
        shape = ", ".join(f"{x}={values[x]}" for x in ("m", "n", "k", "groups") if x in values)
        self.kernel = launcher.Launch(self.fn, (grid, 1, 1), (spec.threads, 1, 1), spec.smem_bytes, spec.cluster,
                                      name=f"{cfg.name} ({shape})")
        if cfg.cluster > 1:
            # a GPC with an odd number of free SMs cannot host a whole cluster on its last one;
            # a persistent grid larger than what is resident would run its last clusters late
            resident = _resident_clusters(self.kernel, cfg)
            if grid > resident * cfg.cluster:
                self.grid = resident * cfg.cluster
                self.kernel.set_grid((self.grid, 1, 1))
        self.values = dict(values, block_m=cfg.block_m, block_n=cfg.block_n)
        self.params = launcher.ParamPack([p.ptx_type(cfg.groups) for p in spec.params])
        self.debug_buffer = None
        binders = {name: _Binder() for name in self.arguments}
        self._per_group: list[tuple[int, object]] = []     # (parameter index, its map or Param)
        for i, p in enumerate(spec.params):
            if p.per_group:             # filled at launch from the groups' values (k_grouped)
                self._per_group.append((i, spec.tensor_map(p.name) if p.type == "tmap" else p))
            elif p.type == "tmap":
                t = spec.tensor_map(p.name)
                shape = (tuple(evaluate(x, self.values) for x in t.dims),
                         tuple(evaluate(x, self.values) for x in t.strides),
                         tuple(evaluate(x, self.values) for x in t.box))
                binders[t.array].maps.append((i, t) + shape)
            elif p.array == "debug":
                if cfg.debug:
                    self.debug_buffer = launcher.DeviceBuffer(64, device)
                    self.debug_buffer.upload(bytes(64))
                self.params[i] = self.debug_buffer.ptr if self.debug_buffer else 0
            elif p.array is not None:
                binders[p.array].slots.append(i)
            else:
                self.params[i] = evaluate(p.value, self.values)
        self._binders = [binders[name] for name in self.arguments]
        self._local = threading.local()

    def _thread_state(self) -> tuple[launcher.ParamPack, list]:
        """This thread's parameter pack and the pointers it was last filled with: launches from
        several threads at once never write into each other's parameters."""
        st = getattr(self._local, "state", None)
        if st is None:
            st = self._local.state = (self.params.copy(), [None] * len(self._binders))
        return st

    def _launch(self, ptrs: Sequence[int], stream: int) -> None:
        params, filled = self._thread_state()
        for j, (b, ptr) in enumerate(zip(self._binders, ptrs)):
            if ptr != filled[j]:
                for i, t, dims, strides, box in b.maps:
                    params[i] = launcher.encode_tensor_map(t.dtype, ptr, dims, strides, box, t.swizzle)
                for i in b.slots:
                    params[i] = ptr
                filled[j] = ptr
        self.kernel(params.address, stream)

    def debug_info(self) -> tuple | None:
        """After a trapped debug launch: (block, warp, barrier 1=full/2=empty, stage, parity)."""
        if self.debug_buffer is None:
            return None
        raw = bytes(self.debug_buffer.download())
        if struct.unpack_from("<I", raw, 0)[0] == 0:
            return None
        return struct.unpack_from("<5I", raw, 16)

    def __repr__(self) -> str:
        shape = ", ".join(f"{x}={self.values[x]}" for x in ("m", "n", "k", "groups"))
        return (f"{type(self).__name__}({shape}, {self.config.name}, grid={self.grid}, "
                f"regs={self.compiled.resources.registers}, smem={self.spec.smem_bytes})")


def default_grid(config: GemmConfig, m: int, n: int, groups: int, num_sms: int | None, device: int = 0) -> int:
    """CTAs to launch: whole clusters, one per SM at most, none idle; the work units come from
    the kernel's spec (the rule an exported bundle's runtime applies too)."""
    spec = kernel_spec(config)
    units = evaluate(spec.units, dict(m=m, n=n, groups=groups, block_m=config.block_m, block_n=config.block_n))
    clusters = min((num_sms or get_num_sms(device)) // config.cluster, units)
    return max(1, clusters) * config.cluster
