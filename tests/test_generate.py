"""Generation: the KV cache changes nothing, padding changes nothing, sampling obeys its rules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import config as config_lib
from proxy_jax import generate as generate_lib
from proxy_jax import model as model_lib
from proxy_jax import text_format, vocab
from helpers import stdlib_docs

NEW = 12


@pytest.fixture(scope="module")
def model_and_params():
    c = config_lib.base_config()
    c.model.dtype = "float32"
    c.model.num_kv_heads = 2
    model = model_lib.Transformer(model_lib.ModelArgs.from_config(c.model, 576))
    z = jnp.zeros((1, 1), jnp.int32)
    params = jax.jit(lambda key: nn.unbox(model.init(key, z, z, z)["params"]))(jax.random.key(7))
    return model, params


@pytest.fixture(scope="module")
def prompts():
    docs = stdlib_docs(3)
    return [docs[0][:5], docs[1][:17], docs[2][:9]]  # three different lengths


@pytest.fixture(scope="module")
def greedy_cached(model_and_params, prompts):
    model, params = model_and_params
    return generate_lib.generate(model, params, prompts, max_new_bytes=NEW)


def test_kv_cache_equals_full_recompute(model_and_params, prompts, greedy_cached):
    model, params = model_and_params
    recomputed = generate_lib.generate(model, params, prompts, max_new_bytes=NEW, use_cache=False)
    assert greedy_cached == recomputed
    assert all(len(x) == NEW for x in greedy_cached)


def test_left_padding_does_not_change_a_row(model_and_params, prompts, greedy_cached):
    model, params = model_and_params
    alone = generate_lib.generate(model, params, [prompts[0]], max_new_bytes=NEW)
    assert alone[0] == greedy_cached[0]


def test_stop_strings_cut_the_output(model_and_params, prompts, greedy_cached):
    model, params = model_and_params
    stop = greedy_cached[1][4:6]
    out = generate_lib.generate(model, params, prompts, max_new_bytes=NEW, stop=[stop])
    for full, cut in zip(greedy_cached, out):
        where = full.find(stop)
        assert cut == (full if where < 0 else full[:where])
    assert len(out[1]) <= 4


def test_stop_id_ends_a_row(model_and_params, prompts):
    """With the final norm zeroing the hidden state all logits tie; the lowest allowed id is EOS."""
    model, params = model_and_params
    params = {**params, "final_norm": {"scale": -jnp.ones_like(params["final_norm"]["scale"])}}
    assert generate_lib.generate(model, params, prompts, max_new_bytes=NEW) == [b"", b"", b""]


def test_sampling_only_emits_bytes_or_stop_ids():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 640)).astype(np.float32)
    logits[:, vocab.COMP_OFFSET :] += 20.0  # compressed symbols are far more likely, and must never appear
    logits[:, 3:12] += 20.0  # so are reserved specials
    ids = generate_lib.sample_next(jnp.asarray(logits), jax.random.key(0), 1.0, 1.0, greedy=False)
    ids = np.asarray(ids)
    ok = vocab.is_raw_byte(ids) | np.isin(ids, text_format.SENTINEL.stop_ids)
    assert ok.all()
    greedy = np.asarray(generate_lib.sample_next(jnp.asarray(logits), None, 1.0, 1.0, greedy=True))
    masked = np.where(text_format.SENTINEL.allowed_mask(640, 640), logits, -np.inf)
    np.testing.assert_array_equal(greedy, masked.argmax(-1))


def test_top_p_keeps_the_nucleus_with_renormalised_frequencies():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    logits = np.full((1, 384), -np.inf, np.float32)
    logits[0, 64:68] = np.log(probs)
    logits = jnp.asarray(np.repeat(logits, 4000, axis=0))
    keys = jax.random.key(1)
    draws = np.asarray(generate_lib.sample_next(logits, keys, 1.0, 0.5, greedy=False)) - 64
    # Mass before id 1 is 0.4 < 0.5, before id 2 it is 0.7: the nucleus is {0, 1}, renormalised 4/7, 3/7.
    assert set(np.unique(draws)) == {0, 1}
    assert abs((draws == 0).mean() - 4 / 7) < 0.03  # 4000 draws: standard error 0.008
    draws = np.asarray(generate_lib.sample_next(logits, keys, 1.0, 1.0, greedy=False)) - 64
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, probs, atol=0.03)
    # Temperature 0.5 squares and renormalises the probabilities.
    draws = np.asarray(generate_lib.sample_next(logits, keys, 0.5, 1.0, greedy=False)) - 64
    want = probs**2 / (probs**2).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / draws.size, want, atol=0.03)


def test_sampled_generation_is_reproducible_and_checked(model_and_params, prompts):
    model, params = model_and_params
    kwargs = dict(max_new_bytes=NEW, temperature=0.8, top_p=0.9)
    a = generate_lib.generate(model, params, prompts, rng=jax.random.key(3), **kwargs)
    b = generate_lib.generate(model, params, prompts, rng=jax.random.key(3), **kwargs)
    assert a == b
    with pytest.raises(ValueError, match="rng"):
        generate_lib.generate(model, params, prompts, **kwargs)
    with pytest.raises(ValueError, match="top_p"):
        generate_lib.generate(model, params, prompts, max_new_bytes=NEW, top_p=0.0)
