"""``model.attention="eva"`` in the whole model: parameters, FLOPs, presets, equality with exact attention
inside one window, decoding with the constant-size cache against recomputation, refusals.

Causality, document isolation and scan-vs-loop for EVA are parametrised into ``tests/test_model.py``;
the attention maths itself is checked against a naive dense version in ``tests/test_eva.py``.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import generate as generate_lib
from proxy_jax import model as model_lib
from proxy_jax import recipes
from proxy_jax import speculative
from proxy_jax.model import eva
from helpers import config_with, stdlib_docs
from stdlib_batches import packed_batches

VOCAB = 576


def make(**model):
    config = config_with(**{"model.dtype": "float32", "model.num_kv_heads": 2,
                            **{f"model.{k}": v for k, v in model.items()}})
    return model_lib.Transformer(model_lib.ModelArgs.from_config(config.model, VOCAB))


@functools.lru_cache(maxsize=None)
def _built(items, seed):
    model = make(**dict(items))
    z = jnp.zeros((1, 1), jnp.int32)
    return model, jax.jit(lambda key: nn.unbox(model.init(key, z, z, z)["params"]))(jax.random.key(seed))


def build(seed=0, **model):
    return _built(tuple(sorted(model.items())), seed)


def _row(length, rows=2):
    batch = packed_batches(1, rows, length, 1, offset=5)[0]
    return batch["tokens"][:, :length], batch["segment_ids"][:, :length], batch["positions"][:, :length]


def test_mu_phi_are_per_layer_params_with_the_eva_init_and_counted():
    model, params = build(attention="eva", scan_layers=True, num_layers=2, num_heads=4, head_dim=32)
    mu, phi = params["layers"]["attn"]["eva_mu"], params["layers"]["attn"]["eva_phi"]
    assert mu.shape == phi.shape == (2, 2, 32)  # [layers, kv_heads, head_dim]
    assert mu.dtype == jnp.float32
    draws = np.concatenate([np.asarray(mu).ravel(), np.asarray(phi).ravel()])
    std = 32**-0.5
    assert abs(draws.std() - std) < 0.15 * std and np.abs(draws).max() <= 2 * std / 0.8796 + 1e-6
    assert not np.allclose(mu[0], mu[1]) and not np.allclose(mu, phi)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == model_lib.count_params(model.args)
    z = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), z, z, z)["params"])
    assert nn.get_partition_spec(boxed)["layers"]["attn"]["eva_mu"] == jax.sharding.PartitionSpec(
        "layers", "kv_heads", "head_dim"
    )


def test_flops_use_the_eva_formula():
    model, _ = build(attention="eva", eva_window=64, eva_chunk=8)
    a = model.args
    n = model_lib.count_params(a, include_embedding=False)
    per_layer = eva.eva_flops_per_token(1024, a.num_heads, a.head_dim, 64, 8, num_kv_heads=a.num_kv_heads)
    assert model_lib.flops_per_token(a, 1024) == 6 * n + a.num_layers * per_layer
    # Far below the full-square count at 16 windows.
    assert model_lib.flops_per_token(a, 1024) - 6 * n < 0.2 * (12 * a.num_layers * a.num_heads * a.head_dim * 1024)


def test_eva_presets_follow_the_paper():
    c = recipes.with_preset("0.5b_eva")
    plain = recipes.with_preset("0.5b")
    assert (c.model.attention, c.model.eva_window, c.model.eva_chunk) == ("eva", 2048, 8)
    assert c.data.seq_len == plain.data.seq_len == 16_384 and c.data.seq_len % c.model.eva_window == 0
    assert c.model.d_model == plain.model.d_model and plain.model.attention == "xla"
    args = model_lib.ModelArgs.from_config(c.model, 320 + 32768)
    assert model_lib.flops_per_token(args, 16_384) < model_lib.flops_per_token(
        model_lib.ModelArgs.from_config(plain.model, 320 + 32768), 16_384
    )
    with pytest.raises(ValueError, match="Unknown preset '3b'"):
        recipes.with_preset("3b_eva")


def test_window_must_be_a_multiple_of_the_chunk():
    with pytest.raises(ValueError, match=r"^model.eva_window=12 must be a positive multiple of model.eva_chunk=8"):
        make(attention="eva", eva_window=12, eva_chunk=8)
    make(attention="xla", eva_window=12, eva_chunk=8)  # ignored unless attention is eva


@pytest.mark.parametrize("window", [32, 64])
def test_one_window_equals_exact_attention(window):
    """With W >= seq_len no query has an earlier window: EVA is exact causal document attention."""
    tokens, segments, positions = _row(32)
    eva_model, eva_params = build(attention="eva", eva_window=window, eva_chunk=8, scan_layers=False)
    xla_model, _ = build(scan_layers=False)
    xla_params = jax.tree.map(lambda x: x, eva_params)
    for i in range(xla_model.args.num_layers):
        attn = {k: v for k, v in xla_params[f"layer_{i}"]["attn"].items() if not k.startswith("eva_")}
        xla_params[f"layer_{i}"] = {**xla_params[f"layer_{i}"], "attn": attn}
    want, _ = jax.jit(lambda p: xla_model.apply({"params": p}, tokens, segments, positions))(xla_params)
    got, _ = jax.jit(lambda p: eva_model.apply({"params": p}, tokens, segments, positions))(eva_params)
    real = segments != 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)
    # A shorter window changes the result (summaries replace exact keys), so the comparison has teeth.
    short_model = make(attention="eva", eva_window=8, eva_chunk=4, scan_layers=False)
    short, _ = jax.jit(lambda p: short_model.apply({"params": p}, tokens, segments, positions))(eva_params)
    assert float(jnp.abs(short - want)[real].max()) > 1e-3


SMALL_EVA = dict(attention="eva", eva_window=8, eva_chunk=4)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_cached_decoding_equals_the_full_forward_pass(scan):
    """Prefill, then one token per call: every step's logits equal those of one pass over the whole
    sequence, across four window boundaries, for a left-padded row and one with two documents."""
    model, params = build(scan_layers=scan, **SMALL_EVA)
    length, prompt = 36, 7
    tokens, segments, positions = (np.array(x) for x in _row(length))
    tokens[1, :3], segments[1, :3], positions[1, :3] = 0, 0, 0  # left padding, as generate lays it out
    positions[1, 3:] = np.arange(length - 3)
    want, _ = jax.jit(lambda p: model.apply({"params": p}, tokens, segments, positions))(params)
    cache = model_lib.init_cache(model, 2, length)
    window_slots = [x.shape for path, x in jax.tree_util.tree_leaves_with_path(cache) if "eva_k_" in str(path)]
    assert window_slots and all(s[-3] == 8 for s in window_slots)  # one window of keys, not the whole length

    @jax.jit
    def feed(cache, t, s, p):
        (logits, _), mutated = model.apply({"params": params, "cache": cache}, t, s, p, decode=True, mutable=["cache"])
        return logits, mutated["cache"]

    got, cache = feed(cache, tokens[:, :prompt], segments[:, :prompt], positions[:, :prompt])
    steps = [got]
    for i in range(prompt, length):
        logits, cache = feed(cache, tokens[:, i : i + 1], segments[:, i : i + 1], positions[:, i : i + 1])
        steps.append(logits)
    got = np.concatenate([np.asarray(x) for x in steps], axis=1)
    real = segments != 0
    np.testing.assert_allclose(got[real], np.asarray(want)[real], rtol=2e-5, atol=2e-5)


def test_generate_with_the_cache_equals_recompute_across_windows():
    model, params = build(seed=3, scan_layers=True, **SMALL_EVA)  # an initialisation that writes 20 bytes
    docs = stdlib_docs(3)
    prompts = [docs[0][:5], docs[1][:17], docs[2][:10]]  # 7, 19 and 12 tokens with BOS and <raw>
    cached = generate_lib.generate(model, params, prompts, max_new_bytes=20)
    assert all(len(x) == 20 for x in cached)  # 19 + 20 slots: five windows of 8
    assert cached == generate_lib.generate(model, params, prompts, max_new_bytes=20, use_cache=False)


def test_speculative_decoding_refuses_eva():
    """(Export's refusal of EVA is tested in tests/test_export.py.)"""
    model, params = build(**SMALL_EVA)
    with pytest.raises(ValueError, match=r"^model.attention='eva' has no speculative decoding"):
        speculative.generate_speculative(model, params, [b"x"], max_new_bytes=2)
