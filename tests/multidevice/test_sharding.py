"""Sharding: a 2x2x2 mesh on 8 fake CPU devices computes what one device computes; config validation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import config as config_lib
from proxy_jax import model as model_lib
from proxy_jax import optimizer as optimizer_lib
from proxy_jax import sharding as sharding_lib
from proxy_jax import train_step as train_step_lib
from stdlib_batches import packed_batches

VOCAB = 576
# float32 everywhere; only the order of reductions differs between layouts.
RTOL, ATOL = 2e-4, 1e-6


def small_config(mesh_shape, accum=1):
    c = config_lib.base_config()
    c.model.dtype = "float32"
    c.model.num_kv_heads = 2
    c.model.num_raw_pred_heads = 1
    c.model.scan_layers = True  # the stacked layers (a leading axis in every spec) as paper-scale runs have them
    c.data.seq_len, c.data.batch_size = 32, 8
    c.opt.grad_accum_steps = accum
    c.opt.warmup_steps = 0  # the first update uses the full learning rate
    c.train.steps = 10
    c.mesh.shape = mesh_shape
    return c


def setup_run(config, devices):
    sharding_lib.validate(config, len(devices), process_count=1)
    model = model_lib.Transformer(model_lib.ModelArgs.from_config(config.model, VOCAB))
    tx, schedule = optimizer_lib.make_optimizer(config.opt, config.train.steps)
    mesh = sharding_lib.make_mesh(config, devices=devices)
    state, shardings = sharding_lib.init_train_state(config, model, tx, mesh, jax.random.key(0))
    return dict(config=config, model=model, tx=tx, schedule=schedule, mesh=mesh, state=state, shardings=shardings)


def loss_and_grads(run, batch_np):
    batch = sharding_lib.host_to_global(batch_np, run["mesh"])
    grad_fn = jax.jit(
        jax.grad(train_step_lib.make_loss_fn(run["model"], VOCAB), has_aux=True),
        in_shardings=(run["shardings"].params, sharding_lib.batch_sharding(run["mesh"])),
    )
    with jax.set_mesh(run["mesh"]), nn.logical_axis_rules(sharding_lib.logical_rules(run["config"])):
        grads, terms = grad_fn(run["state"].params, {k: batch[k] for k in train_step_lib.MODEL_KEYS})
    return jax.device_get(grads), jax.device_get(terms)


def one_step(run, batch_np, accum=1):
    config = run["config"].copy_and_resolve_references()
    config.opt.grad_accum_steps = accum
    step = train_step_lib.make_train_step(
        config, run["model"], run["tx"], run["mesh"], run["shardings"], VOCAB, run["schedule"]
    )
    state = jax.tree.map(jnp.copy, run["state"])  # the step donates its input
    state, metrics = step(state, sharding_lib.host_to_global(batch_np, run["mesh"]))
    return jax.device_get(state.params), jax.device_get(metrics)


def assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module")
def batch_np():
    return packed_batches(1, 8, 32, 2, comp_every=3)[0]


@pytest.fixture(scope="module")
def single():
    return setup_run(small_config((1, 1, 1)), jax.devices()[:1])


@pytest.fixture(scope="module")
def sharded():
    assert len(jax.devices()) == 8
    return setup_run(small_config((2, 2, 2)), jax.devices())


@pytest.fixture(scope="module")
def sharded_step(sharded, batch_np):
    return one_step(sharded, batch_np)


def test_2x2x2_mesh_matches_one_device(single, sharded, sharded_step, batch_np):
    spec = sharded["shardings"].params["layers"]["mlp"]["up"].spec
    assert spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")  # really sharded, not replicated
    # Initialisation does not depend on the layout.
    assert_trees_close(jax.device_get(sharded["state"].params), jax.device_get(single["state"].params), 0, 0)
    grads_1, terms_1 = loss_and_grads(single, batch_np)
    grads_8, terms_8 = loss_and_grads(sharded, batch_np)
    assert_trees_close(grads_8, grads_1)
    for key in ("positions", "tokens", "raw_targets", "comp_targets"):
        assert int(terms_8[key]) == int(terms_1[key]) > 0, key
    np.testing.assert_allclose(terms_8["loss_sum"], terms_1["loss_sum"], rtol=RTOL)
    # The jitted, donated, sharded step reports the same loss and gradient norm.
    _, metrics = sharded_step
    n = terms_1["positions"]
    np.testing.assert_allclose(metrics["loss"], terms_1["loss_sum"] / n, rtol=RTOL)
    norm_1 = np.sqrt(sum(np.sum(np.square(g / n, dtype=np.float64)) for g in jax.tree.leaves(grads_1)))
    np.testing.assert_allclose(metrics["grad_norm"], norm_1, rtol=RTOL)
    np.testing.assert_allclose(metrics["raw_loss"], terms_1["raw_nll_sum"] / terms_1["raw_targets"], rtol=RTOL)
    np.testing.assert_allclose(metrics["comp_loss"], terms_1["comp_nll_sum"] / terms_1["comp_targets"], rtol=RTOL)


def test_gradient_accumulation_matches_full_batch(sharded, sharded_step, batch_np):
    params, metrics = sharded_step
    acc_params, acc_metrics = one_step(sharded, batch_np, accum=2)
    for key in ("loss", "raw_loss", "comp_loss", "grad_norm", "lr"):
        np.testing.assert_allclose(acc_metrics[key], metrics[key], rtol=RTOL)
    assert int(acc_metrics["tokens"]) == int(metrics["tokens"])
    # Adam's first step is lr * g / (|g| + eps): for a gradient that is zero up to rounding its sign, hence a
    # step of +-lr, depends on the summation order. Everything else must agree closely; such sign flips
    # (a difference of at most 2 * lr) may touch at most one element in 10^4.
    lr = float(metrics["lr"])
    for a, b in zip(jax.tree.leaves(jax.device_get(acc_params)), jax.tree.leaves(jax.device_get(params))):
        off = ~np.isclose(a, b, rtol=1e-3, atol=1e-5)
        assert off.mean() <= 1e-4, f"{off.sum()} of {off.size} elements differ"
        assert np.all(np.abs(a - b)[off] <= 2 * lr * (1 + 1e-3))
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, jax.device_get(sharded["state"].params))
    assert min(jax.tree.leaves(moved)) > 0  # every parameter was updated


def test_host_to_global_places_rows(batch_np):
    mesh = sharding_lib.make_mesh(small_config((2, 2, 2)))
    batch = sharding_lib.host_to_global(batch_np, mesh)
    for key, value in batch_np.items():
        assert batch[key].shape == value.shape
        np.testing.assert_array_equal(np.asarray(batch[key]), value)
        assert batch[key].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    shard_rows = sorted(int(s.index[0].start or 0) for s in batch["tokens"].addressable_shards)
    assert shard_rows == [0, 0, 2, 2, 4, 4, 6, 6]  # 4 batch shards, each on the 2 tensor devices


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(mesh_shape=(3, 1, 1)), "mesh.shape"),
        (dict(mesh_shape=(-1, -1, 1)), "at most one -1"),
        (dict(batch_size=6), "data.batch_size=6"),
        (dict(accum=3), "grad_accum_steps"),
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3"),
        (dict(mesh_shape=(1, 1, 8), num_heads=4, num_kv_heads=4), "num_heads=4 is not divisible by the tensor"),
        (dict(mesh_shape=(1, 8, 1), d_model=100, batch_size=8), "d_model=100"),
    ],
)
def test_validate_names_the_bad_value(change, message):
    config = small_config(change.get("mesh_shape", (2, 2, 2)), accum=change.get("accum", 1))
    config.data.batch_size = change.get("batch_size", 8)
    for key in ("num_heads", "num_kv_heads", "d_model"):
        if key in change:
            config.model[key] = change[key]
    with pytest.raises(ValueError, match=message):
        sharding_lib.validate(config, 8, process_count=1)


def test_validate_checks_process_count_and_accepts_good_configs():
    config = small_config((-1, 1, 1))
    sharding_lib.validate(config, 8, process_count=1)
    sharding_lib.validate(config, 8, process_count=8)
    config.data.batch_size = 24
    with pytest.raises(ValueError, match="16 processes"):
        sharding_lib.validate(config, 8, process_count=16)
