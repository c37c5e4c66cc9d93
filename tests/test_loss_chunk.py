"""Chunked cross-entropy (``model.loss_chunk``): the same loss terms and gradients as the whole-batch
loss, for chunk sizes that divide the length and ones that do not, with two main heads and a raw head."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import model as model_lib
from proxy_jax import train_step as train_step_lib
from helpers import config_with
from stdlib_batches import packed_batches

HEADS, RAW_HEADS, LENGTH, VOCAB = 2, 1, 40, 576  # 576 pads to 640: the masked rows are exercised too


@pytest.fixture(scope="module")
def setup():
    config = config_with(**{"model.dtype": "float32", "model.num_pred_heads": HEADS,
                            "model.num_raw_pred_heads": RAW_HEADS})
    model = model_lib.Transformer(model_lib.ModelArgs.from_config(config.model, VOCAB))
    z = jnp.zeros((1, 1), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), z, z, z)["params"])
    # Larger head weights than at init, so the logits (and their gradients) are far from uniform.
    params = {**params, "head": params["head"] * 40.0, "raw_head": params["raw_head"] * 40.0}
    batch = packed_batches(1, 3, LENGTH, HEADS + RAW_HEADS, comp_every=2)[0]
    batch = {k: np.asarray(v).copy() for k, v in batch.items()}
    batch["tokens"][2, 30:], batch["segment_ids"][2, 30:] = 0, 0  # trailing padding in one row
    return model, params, batch, _value_and_grad(model, params, batch, 0)


def _value_and_grad(model, params, batch, chunk):
    loss_fn = train_step_lib.make_loss_fn(model, VOCAB, loss_chunk=chunk)
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch)


@pytest.mark.parametrize("chunk", [16, 7, 1, 100])
def test_chunked_loss_terms_and_gradients_match_unchunked(setup, chunk):
    model, params, batch, ((_, want_terms), want_grads) = setup
    (_, terms), grads = _value_and_grad(model, params, batch, chunk)
    assert int(want_terms["raw_targets"]) > 0 and int(want_terms["comp_targets"]) > 0
    assert set(terms) == set(want_terms)
    for key, want in want_terms.items():
        np.testing.assert_allclose(np.asarray(terms[key]), np.asarray(want), rtol=1e-5, err_msg=key)
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    want_flat = jax.tree.leaves(want_grads)
    for (path, g), w in zip(flat, want_flat):
        scale = np.abs(w).max()
        assert scale > 0, path
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_chunked_loss_never_holds_all_logits():
    """The compiled chunked step needs far less temporary memory than the whole-batch one."""
    config = config_with(**{"model.dtype": "float32"})
    model = model_lib.Transformer(model_lib.ModelArgs.from_config(config.model, 320 + 16_000))
    z = jnp.zeros((1, 1), jnp.int32)
    params = jax.eval_shape(lambda k: nn.unbox(model.init(k, z, z, z)["params"]), jax.random.key(0))
    batch = {k: jax.ShapeDtypeStruct((2, 513), jnp.int32) for k in train_step_lib.MODEL_KEYS}

    def temp_bytes(chunk):
        fn = jax.grad(train_step_lib.make_loss_fn(model, 320 + 16_000, loss_chunk=chunk), has_aux=True)
        return jax.jit(fn).lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 2 * 512 * model.args.padded_vocab_size * 4
    whole, chunked = temp_bytes(0), temp_bytes(64)
    assert whole > 2 * logits_bytes  # logits and their gradient (at least) live at once
    assert chunked < whole - 1.5 * logits_bytes, (whole, chunked)
