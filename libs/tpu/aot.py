"""Ahead-of-time compilation of a program for a TPU topology, on a CPU-only host.

Before anyone pays for a slice, this says whether a program fits its chips: the trainer's
step (services/trainer/step.py, with the run's shardings, microbatches, remat and
attention) or the eval service's scoring and generation is lowered for the devices of
`jax.experimental.topologies` and compiled by libtpu, and XLA's memory analysis gives the
bytes each chip needs. The usable HBM is libtpu's own figure, read from its answer to an
allocation no chip can hold.

libtpu lives in a repository of its own (@libtpu_wheel, see WORKSPACE), outside the main
environment, so that JAX on a CPU machine starts no TPU runtime. `use_libtpu()` points JAX at
it to compile on a CPU host; `use_libtpu_runtime()` points JAX at it to run on a TPU VM's
chips (the trainer's TPU entry, services/trainer/api/main_tpu.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

TOPOLOGY_SHAPES = {
    # v5e slices are named by chips; one host drives 4 chips (v5e-8: one host of 8).
    **{
        f"v5e-{n}": (f"v5e:{shape}", hosts)
        for n, shape, hosts in [
            (1, "1x1", (1, 1, 1)),
            (4, "2x2", (2, 2, 1)),
            (8, "2x4", (2, 4, 1)),
            (16, "4x4", (2, 2, 1)),
            (32, "4x8", (2, 2, 1)),
            (64, "8x8", (2, 2, 1)),
            (128, "8x16", (2, 2, 1)),
            (256, "16x16", (2, 2, 1)),
        ]
    },
    # v4 and v5p slices are named by TensorCores, two a chip; 4 chips a host.
    **{
        f"{gen}-{n}": (f"{gen}:{shape}", (2, 2, 1))
        for gen in ("v4", "v5p")
        for n, shape in [
            (8, "2x2x1"),
            (16, "2x2x2"),
            (32, "2x2x4"),
            (64, "2x4x4"),
            (128, "4x4x4"),
            (256, "4x4x8"),
            (512, "4x8x8"),
        ]
    },
}


def find_libtpu() -> str | None:
    """Path of libtpu.so from the @libtpu_wheel repository in this binary's runfiles."""
    here = os.path.abspath(__file__)
    roots = [os.environ.get("RUNFILES_DIR", "")]
    parent = os.path.dirname(here)
    for _ in range(6):
        roots += [parent, os.path.join(parent, "external")]
        parent = os.path.dirname(parent)
    for root in roots:
        path = os.path.join(root, "libtpu_wheel", "site", "libtpu", "libtpu.so")
        if root and os.path.exists(path):
            return path
    return None


def _point_jax_at_libtpu() -> str:
    """Sets TPU_LIBRARY_PATH (kept when it names a file) to the runfiles' libtpu.so."""
    path = os.environ.get("TPU_LIBRARY_PATH") or find_libtpu()
    if not path or not os.path.exists(path):
        raise RuntimeError(
            "libtpu not found: run through Bazel (the @libtpu_wheel repository) or set "
            "TPU_LIBRARY_PATH to a libtpu.so"
        )
    os.environ["TPU_LIBRARY_PATH"] = path
    return path


def use_libtpu() -> str:
    """Point JAX's TPU plugin at @libtpu_wheel to compile on a CPU host (call before JAX
    starts a backend)."""
    path = _point_jax_at_libtpu()
    # A CPU host has no TPU metadata; libtpu only warns without these.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    return path


def use_libtpu_runtime() -> str:
    """Point JAX at @libtpu_wheel to run on a TPU VM's chips (call before JAX is imported).

    Unlike use_libtpu(), the TPU metadata server stays in use: on a TPU VM libtpu reads
    the slice's topology and its hosts' addresses from it. JAX reads TPU_LIBRARY_PATH when
    it is imported, so a later call would leave the TPU runtime unstarted.
    """
    if "jax" in sys.modules:
        raise RuntimeError("use_libtpu_runtime() must run before JAX is imported")
    return _point_jax_at_libtpu()


def topology_devices(name: str):
    """The devices of a named TPU slice ("v5e-16", "v4-32", or libtpu's "v5e:4x4")."""
    from jax.experimental import topologies

    if name in TOPOLOGY_SHAPES:
        topology_name, hosts = TOPOLOGY_SHAPES[name]
    elif ":" in name:
        topology_name, hosts = name, (2, 2, 1)
    else:
        raise ValueError(f"topology: unknown {name!r}; known: {', '.join(TOPOLOGY_SHAPES)}")
    topo = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topology_name,
        chip_config_name="default",
        chips_per_host_bounds=hosts,
        num_slices=1,
    )
    return topo.devices


_HBM = re.compile(r"exceeds available HBM \(([0-9.]+)([KMGT])\)")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def usable_hbm_bytes(device) -> int:
    """The HBM libtpu lets one program use on `device`'s chip, in bytes.

    Topology devices have no memory_stats(); libtpu names the figure when it refuses a
    program that needs more than that.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array([device]), ("x",))
    too_big = jax.jit(
        lambda: jnp.zeros((1 << 40,), jnp.int8),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )
    try:
        too_big.lower().compile()
    except Exception as e:  # libtpu's RESOURCE_EXHAUSTED, as a JaxRuntimeError
        match = _HBM.search(str(e))
        if match:
            return int(float(match.group(1)) * _UNIT[match.group(2)])
        raise
    raise RuntimeError("a 1 TiB allocation compiled: cannot tell this chip's HBM")


@dataclasses.dataclass
class CompiledStep:
    """What the compiler says of one step on one chip."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int
    compile_s: float
    # XLA's cost analysis of the compiled (per-device) step: FLOPs it executes,
    # recomputation included, and bytes it moves to and from HBM. 0: not compiled.
    xla_flops: float = 0.0
    xla_bytes: float = 0.0

    def roofline_s(self, peak_flops: float, hbm_bytes_per_s: float) -> float:
        """A lower bound of the step time: compute- or memory-bound, whichever is slower."""
        return max(self.xla_flops / peak_flops, self.xla_bytes / hbm_bytes_per_s)

    @property
    def bytes_per_chip(self) -> int:
        # Donated outputs alias their arguments, so they are counted once.
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.code_bytes
        )

    @property
    def fits(self) -> bool:
        return self.bytes_per_chip <= self.hbm_bytes

    @property
    def headroom(self) -> float:
        return 1.0 - self.bytes_per_chip / self.hbm_bytes


def compile_step(program, global_batch_size: int, seq_len: int, hbm_bytes: int) -> CompiledStep:
    """Lower and compile `program` (a step.StepProgram on topology devices).

    A step that cannot fit libtpu refuses to compile; that comes back as a CompiledStep
    whose temporaries are what libtpu said they would be.
    """
    args = program.abstract_args(global_batch_size, seq_len)
    return compile_lowered(program.mesh, lambda: program.jitted().lower(*args), hbm_bytes)


def compile_lowered(mesh, lower, hbm_bytes: int) -> CompiledStep:
    """Compile what `lower()` lowers under `mesh` (a jax Lowered of any program on
    topology devices), as compile_step does a training step."""
    import jax

    start = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = lower()
    try:
        compiled = lowered.compile()
    except Exception as e:
        match = re.search(r"HLO temporaries \(([0-9.]+)([KMGT])\)", str(e))
        if not match:
            raise
        temp = int(float(match.group(1)) * _UNIT[match.group(2)])
        return CompiledStep(0, 0, 0, temp, 0, hbm_bytes, time.perf_counter() - start)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return CompiledStep(
        xla_flops=float(cost.get("flops", 0.0)),
        xla_bytes=float(cost.get("bytes accessed", 0.0)),
        argument_bytes=mem.argument_size_in_bytes,
        output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        code_bytes=mem.generated_code_size_in_bytes,
        hbm_bytes=hbm_bytes,
        compile_s=time.perf_counter() - start,
    )


def microbatch_choices(global_batch_size: int, batch_shards: int) -> list[int]:
    """Every microbatch count the batch allows, fewest first: divisors of each shard's rows."""
    rows = global_batch_size // batch_shards
    return [k for k in range(1, rows + 1) if rows % k == 0]
