"""Device mesh, logical-axis rules, sharded initialisation and host -> global batches.

The mesh has three axes, ``data``, ``fsdp`` and ``tensor`` (``config.mesh.shape``; one -1 takes the
remaining devices). Parameters carry logical axis names (``proxy_jax.model.transformer``) that ``config.mesh.rules``
maps onto mesh axes; the batch dimension is split over ``("data", "fsdp")``.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: dict
    opt_state: tuple


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """``config.mesh.shape`` with its -1 resolved against ``num_devices``."""
    shape = [int(s) for s in config.mesh.shape]
    names = tuple(config.mesh.axis_names)
    if len(shape) != len(names):
        raise ValueError(f"mesh.shape={tuple(shape)} must have one entry per axis in mesh.axis_names={names}.")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={tuple(shape)} may hold positive sizes and at most one -1.")
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
        raise ValueError(
            f"mesh.shape={tuple(shape)} needs a multiple of {known} devices but there are {num_devices}; "
            "change mesh.shape so its product divides the device count."
        )
    shape = [num_devices // known if s == -1 else s for s in shape]
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh.shape={tuple(config.mesh.shape)} covers {math.prod(shape)} devices but there are "
            f"{num_devices}; use -1 for one axis or make the product equal the device count."
        )
    return tuple(shape)


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over all devices (or ``devices``), with Auto axis types."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(config, len(devices))
    names = tuple(config.mesh.axis_names)
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def logical_rules(config: ml_collections.ConfigDict) -> tuple:
    """``config.mesh.rules`` as the hashable tuple flax expects (lists become tuples)."""
    rules = []
    for name, axes in config.mesh.rules:
        if isinstance(axes, list):
            axes = tuple(axes)
        rules.append((name, axes))
    return tuple(rules)


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int | None = None) -> None:
    """Every check that depends on the devices or processes (and only those); raises one sentence.

    Batch and eval-batch divisibility by the mesh and the processes, model widths by the fsdp/tensor axes,
    sequence length by the splash block. Ranges of single values are ``config.validate``'s, the model's
    own constraints ``ModelArgs.check``'s.
    """
    process_count = jax.process_count() if process_count is None else process_count
    data, fsdp, tensor = mesh_shape(config, num_devices)
    m = config.model
    batch = int(config.data.batch_size)
    accum = int(config.opt.grad_accum_steps)
    if batch % (data * fsdp * accum):
        raise ValueError(
            f"data.batch_size={batch} must be divisible by data*fsdp*grad_accum_steps={data}*{fsdp}*{accum}; "
            "change the batch size or the mesh."
        )
    if batch % process_count:
        raise ValueError(
            f"data.batch_size={batch} must be divisible by the {process_count} processes; change the batch size."
        )
    shards = int(config.data.virtual_shards)
    if shards and shards % process_count:
        raise ValueError(
            f"data.virtual_shards={shards} is not divisible by the {process_count} processes; a run resumes "
            f"only on a process count that divides it (with the same data.virtual_shards)."
        )
    eval_batch = int(config.train.eval_batch_size)
    if eval_batch % math.lcm(data * fsdp, process_count):
        raise ValueError(
            f"train.eval_batch_size={eval_batch} must be divisible by data*fsdp={data * fsdp} and by the "
            f"{process_count} processes; change it to a multiple of {math.lcm(data * fsdp, process_count)}."
        )
    for key in ("num_heads", "num_kv_heads", "d_ff"):
        if int(m[key]) % tensor:
            raise ValueError(
                f"model.{key}={m[key]} is not divisible by the tensor axis size {tensor}; "
                "change the model size or mesh.shape."
            )
    if int(m.d_model) % fsdp:
        raise ValueError(
            f"model.d_model={m.d_model} is not divisible by the fsdp axis size {fsdp}; change mesh.shape."
        )
    if m.attention == "splash" and int(config.data.seq_len) % 128:
        raise ValueError(f"data.seq_len={config.data.seq_len} must be a multiple of 128 for splash attention.")


def _boxed_init(model, tx):
    """``key -> TrainState`` with logically-annotated (boxed) parameters."""
    zeros_1x1 = jnp.zeros((1, 1), jnp.int32)

    def init(key):
        params = model.init(key, zeros_1x1, zeros_1x1, zeros_1x1)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def abstract_train_state(config, model, tx, mesh: Mesh):
    """Shapes, dtypes and shardings of the train state without allocating it (ahead-of-time compiles).

    Returns ``(abstract_state, state_shardings)``; leaves are ``jax.ShapeDtypeStruct`` with shardings.
    """
    abstract = jax.eval_shape(_boxed_init(model, tx), jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, logical_rules(config))
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(abstract), shardings)
    return state, shardings


def abstract_params(config, model, mesh: Mesh):
    """Shapes, dtypes and shardings of the parameters alone (restoring for evaluation needs no optimiser).

    Returns ``(abstract_params, param_shardings)``, as :func:`abstract_train_state` does for the state.
    """
    zeros_1x1 = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda key: model.init(key, zeros_1x1, zeros_1x1, zeros_1x1)["params"],
                              jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, logical_rules(config))
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(abstract),
                          shardings)
    return params, shardings


def init_train_state(config, model, tx, mesh: Mesh, rng):
    """Initialise parameters and optimiser state directly in their sharded layout.

    Returns ``(state, state_shardings)``; ``state_shardings`` mirrors ``state`` with NamedShardings.
    """
    _, shardings = abstract_train_state(config, model, tx, mesh)
    init = _boxed_init(model, tx)
    with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules(config)):
        state = jax.jit(lambda key: nn.unbox(init(key)), out_shardings=shardings)(rng)
    return state, shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ``data`` x ``fsdp``, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def host_to_global(batch_np: dict, mesh: Mesh) -> dict:
    """This host's rows (numpy, leading batch dim) -> global jax.Arrays sharded over the batch axes.

    Every process passes its own ``global_batch / process_count`` rows; rows of process i land at
    ``[i * local, (i + 1) * local)`` of the global batch (checked: the global row order, hence the virtual
    data shards' order, is the same for any number of processes).
    """
    sharding = batch_sharding(mesh)
    local_rows = len(next(iter(batch_np.values())))
    check_process_rows(mesh, local_rows * jax.process_count())
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch_np.items()
    }


@functools.lru_cache(maxsize=16)
def process_rows(mesh: Mesh, global_rows: int, process_index: int) -> tuple[int, int]:
    """``[start, stop)`` of the global batch rows that the devices of ``process_index`` hold on ``mesh``."""
    index_map = batch_sharding(mesh).devices_indices_map((global_rows,))
    spans = [index_map[d][0].indices(global_rows)[:2] for d in mesh.devices.flat if d.process_index == process_index]
    return min(s for s, _ in spans), max(e for _, e in spans)


def check_process_rows(mesh: Mesh, global_rows: int) -> None:
    """Raises unless this process's devices hold exactly its own block of rows, in process order."""
    p, count = jax.process_index(), jax.process_count()
    local = global_rows // count
    got = process_rows(mesh, global_rows, p)
    if got != (p * local, (p + 1) * local):
        raise ValueError(
            f"The mesh gives process {p} batch rows [{got[0]}, {got[1]}) instead of its own block "
            f"[{p * local}, {(p + 1) * local}); order mesh devices by process along the data/fsdp axes."
        )
