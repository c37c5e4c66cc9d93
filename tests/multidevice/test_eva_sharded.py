"""EVA attention in the sharded train step: a 2x2x2 (data, fsdp, tensor) mesh computes what one device does.

Rows of 32 tokens with windows of 16 and chunks of 4, so the second window reads summaries; scanned
layers with the ``dots`` remat policy; two KV heads for four query heads (GQA), split over the tensor axis.
"""

import jax
import numpy as np
import pytest

from stdlib_batches import packed_batches
from test_sharding import RTOL, assert_trees_close, loss_and_grads, one_step, setup_run, small_config


def eva_config(mesh_shape):
    c = small_config(mesh_shape)
    c.model.attention, c.model.eva_window, c.model.eva_chunk = "eva", 16, 4
    c.model.remat_policy = "dots"
    return c


@pytest.fixture(scope="module")
def batch_np():
    return packed_batches(1, 8, 32, 2, comp_every=3)[0]


def test_eva_2x2x2_mesh_matches_one_device(batch_np):
    assert len(jax.devices()) == 8
    single = setup_run(eva_config((1, 1, 1)), jax.devices()[:1])
    sharded = setup_run(eva_config((2, 2, 2)), jax.devices())
    mu_spec = sharded["shardings"].params["layers"]["attn"]["eva_mu"].spec
    assert mu_spec == jax.sharding.PartitionSpec(None, "tensor", None)  # [layers, kv_heads, head_dim]
    assert_trees_close(jax.device_get(sharded["state"].params), jax.device_get(single["state"].params), 0, 0)
    grads_1, terms_1 = loss_and_grads(single, batch_np)
    grads_8, terms_8 = loss_and_grads(sharded, batch_np)
    assert float(np.abs(grads_1["layers"]["attn"]["eva_mu"]).max()) > 0  # the summaries are used
    # Gradients reach ~0.1; the summaries' extra softmaxes add reduction-order noise of ~1e-6 absolute.
    assert_trees_close(grads_8, grads_1, atol=5e-6)
    np.testing.assert_allclose(terms_8["loss_sum"], terms_1["loss_sum"], rtol=RTOL)
    params_8, metrics_8 = one_step(sharded, batch_np)
    params_1, metrics_1 = one_step(single, batch_np)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=RTOL)
    np.testing.assert_allclose(metrics_8["loss"], terms_1["loss_sum"] / terms_1["positions"], rtol=RTOL)
