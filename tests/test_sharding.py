"""Sharding: a 2x2x2 mesh on 8 fake CPU devices computes what one device computes; config validation."""

import flax.linen as nn
import jax
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
    c.data.seq_len, c.data.batch_size = 32, 8
    c.opt.grad_accum_steps = accum
    c.opt.warmup_steps = 0  # the first update uses the full learning rate
    c.train.steps = 10
    c.mesh.shape = mesh_shape
    return c


def run_one_step(config, devices, batch_np):
    sharding_lib.validate(config, len(devices), process_count=1)
    model = model_lib.Transformer(model_lib.ModelArgs.from_config(config.model, VOCAB))
    tx, schedule = optimizer_lib.make_optimizer(config.opt, config.train.steps)
    mesh = sharding_lib.make_mesh(config, devices=devices)
    state, shardings = sharding_lib.init_train_state(config, model, tx, mesh, jax.random.key(0))
    init_params = jax.device_get(state.params)
    batch = sharding_lib.host_to_global(batch_np, mesh)
    grad_fn = jax.jit(
        jax.grad(train_step_lib.make_loss_fn(model, VOCAB), has_aux=True),
        in_shardings=(shardings.params, sharding_lib.batch_sharding(mesh)),
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.logical_rules(config)):
        grads, terms = grad_fn(state.params, {k: batch[k] for k in train_step_lib.MODEL_KEYS})
    step = train_step_lib.make_train_step(config, model, tx, mesh, shardings, VOCAB, schedule)
    state, metrics = step(state, batch)
    return dict(
        init=init_params,
        grads=jax.device_get(grads),
        positions=int(terms["positions"]),
        params=jax.device_get(state.params),
        metrics=jax.device_get(metrics),
        shardings=shardings,
    )


def assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module")
def batch_np():
    return packed_batches(1, 8, 32, 2, comp_every=3)[0]


@pytest.fixture(scope="module")
def single(batch_np):
    return run_one_step(small_config((1, 1, 1)), jax.devices()[:1], batch_np)


@pytest.fixture(scope="module")
def sharded(batch_np):
    assert len(jax.devices()) == 8
    return run_one_step(small_config((2, 2, 2)), jax.devices(), batch_np)


def test_2x2x2_mesh_matches_one_device(single, sharded):
    spec = sharded["shardings"].params["layers"]["mlp"]["up"].spec
    assert spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")  # really sharded, not replicated
    # Initialisation does not depend on the layout.
    assert_trees_close(sharded["init"], single["init"], rtol=0, atol=0)
    assert sharded["positions"] == single["positions"] > 0
    assert_trees_close(sharded["grads"], single["grads"])
    for key in ("loss", "raw_loss", "comp_loss", "grad_norm", "lr"):
        np.testing.assert_allclose(sharded["metrics"][key], single["metrics"][key], rtol=RTOL)
    for key in ("tokens", "raw_targets", "comp_targets"):
        assert int(sharded["metrics"][key]) == int(single["metrics"][key])
    # Adam's first step divides by sqrt(v): tiny gradients amplify noise, so compare with a looser atol.
    assert_trees_close(sharded["params"], single["params"], rtol=1e-3, atol=1e-5)


def test_gradient_accumulation_matches_full_batch(sharded, batch_np):
    accumulated = run_one_step(small_config((2, 2, 2), accum=2), jax.devices(), batch_np)
    for key in ("loss", "raw_loss", "comp_loss", "grad_norm"):
        np.testing.assert_allclose(accumulated["metrics"][key], sharded["metrics"][key], rtol=RTOL)
    assert int(accumulated["metrics"]["tokens"]) == int(sharded["metrics"]["tokens"])
    assert_trees_close(accumulated["params"], sharded["params"], rtol=1e-3, atol=1e-5)


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
