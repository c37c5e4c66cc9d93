"""Model and loss: causality through gradients, document masking, scan/remat/GQA equivalences, loss rules."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import config as config_lib
from proxy_jax import model as model_lib
from proxy_jax import optimizer as optimizer_lib
from proxy_jax import recipes
from proxy_jax import sharding as sharding_lib
from proxy_jax import train_step as train_step_lib
from proxy_jax import vocab
from proxy_jax.model import attention as attention_lib
from helpers import config_with, packed_attention_inputs
from stdlib_batches import packed_batches, segments_and_positions


def tiny_config(**model_overrides):
    return config_with(**{"model.dtype": "float32", **{f"model.{k}": v for k, v in model_overrides.items()}})


def make_model(config, vocab_size=576):
    return model_lib.Transformer(model_lib.ModelArgs.from_config(config.model, vocab_size))


def param_shapes(model):
    z = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda key: nn.unbox(model.init(key, z, z, z)["params"]), jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _built(overrides, vocab_size, seed):
    model = make_model(tiny_config(**dict(overrides)), vocab_size)
    z = jnp.zeros((1, 1), jnp.int32)
    params = jax.jit(lambda key: nn.unbox(model.init(key, z, z, z)["params"]))(jax.random.key(seed))
    return model, params


def build(vocab_size=576, seed=0, **overrides):
    """A model of ``tiny_config(**overrides)`` and its initial parameters (cached: compiles are slow)."""
    return _built(tuple(sorted(overrides.items())), vocab_size, seed)


def test_count_params_matches_init_and_flops_formula():
    for overrides in ({}, {"num_kv_heads": 2, "num_raw_pred_heads": 1, "num_pred_heads": 2}):
        model = make_model(tiny_config(**overrides))
        n = sum(x.size for x in jax.tree.leaves(param_shapes(model)))
        assert n == model_lib.count_params(model.args)
        non_embed = model_lib.count_params(model.args, include_embedding=False)
        assert n - non_embed == model.args.padded_vocab_size * model.args.d_model
        a = model.args
        assert model_lib.flops_per_token(a, 256) == 6 * non_embed + 12 * a.num_layers * a.num_heads * a.head_dim * 256


def test_paper_sizes_have_their_stated_scale():
    config = config_lib.base_config()
    for name, low, high in (("0.5B", 0.4e9, 0.8e9), ("1.5B", 1.2e9, 2.0e9), ("7B", 6e9, 8e9), ("14B", 12e9, 17e9)):
        recipes.apply_size(config, name)
        args = model_lib.ModelArgs.from_config(config.model, 320 + 65536)
        assert low < model_lib.count_params(args, include_embedding=False) < high, name
    with pytest.raises(ValueError, match="Unknown model size"):
        recipes.apply_size(config, "3B")


def _stdlib_row(length):
    batch = packed_batches(1, 1, length - 1, 1, offset=3)[0]
    return batch["tokens"][:, :length], batch["segment_ids"][:, :length], batch["positions"][:, :length]


# EVA with windows of 8 and chunks of 4: the 24-token rows below span three windows, so queries also
# read pooled summaries of earlier windows (the same rules must hold through them).
EVA_SMALL = (("attention", "eva"), ("eva_window", 8), ("eva_chunk", 4))


@pytest.mark.parametrize("attention", [(), EVA_SMALL], ids=["xla", "eva"])
def test_causality_and_document_mask_through_gradients(attention):
    """d logits[t] / d embedding[s] is exactly zero for s > t, for s in another document and for padding."""
    model, params = build(num_kv_heads=2, scan_layers=False, **dict(attention))
    length = 24
    tokens, _, _ = _stdlib_row(length)
    tokens = np.array(tokens)
    tokens[0, :2] = vocab.PAD  # leading padding, as in left-padded generation
    tokens[0, 10] = vocab.BOS  # a second document starts at 10
    segments, positions = segments_and_positions(tokens)
    assert segments[0, 9] != segments[0, 10] and segments[0, 0] == 0
    perturb_LxD = jnp.zeros((length, model.args.d_model))

    def summed_logits_L(p_LxD):
        variables = {"params": params, "perturbations": {"embeddings": p_LxD[None]}}
        logits, _ = model.apply(variables, tokens, segments, positions)
        return logits[0, :, 0].sum(-1)

    jacobian_LxLxD = np.asarray(jax.jit(jax.jacrev(summed_logits_L))(perturb_LxD))
    for t in range(2, length):  # outputs at padding queries are never used
        g_LxD = np.abs(jacobian_LxLxD[t]).sum(-1)
        same_doc = segments[0] == segments[0, t]
        visible = (np.arange(length) <= t) & same_doc
        assert np.all(g_LxD[~visible] == 0.0), (t, g_LxD)
        assert np.all(g_LxD[visible] > 0.0), (t, g_LxD)


@functools.lru_cache(maxsize=None)
def _jitted_apply(args):
    model = model_lib.Transformer(args)
    return jax.jit(lambda p, *x: model.apply({"params": p}, *x))


def forward(model, params, *inputs):
    return _jitted_apply(model.args)(params, *inputs)


def _scanned(params_unscanned, num_layers):
    layers = [params_unscanned[f"layer_{i}"] for i in range(num_layers)]
    out = {k: v for k, v in params_unscanned.items() if not k.startswith("layer_")}
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


@pytest.mark.parametrize("attention", [(), EVA_SMALL], ids=["xla", "eva"])
def test_scan_with_remat_matches_python_loop(attention):
    """Same parameters (stacked for scan): same loss and gradients with scan + full remat as a plain loop."""
    tokens, segments, positions = _stdlib_row(32)
    loop_model, loop_params = build(scan_layers=False, num_kv_heads=2, **dict(attention))
    scan_model = make_model(tiny_config(scan_layers=True, num_kv_heads=2, remat_policy="full", **dict(attention)))
    params = _scanned(loop_params, loop_model.args.num_layers)
    assert jax.tree.structure(param_shapes(scan_model)) == jax.tree.structure(params)

    def value_and_grad(model, p):
        def loss(p):
            return jnp.square(model.apply({"params": p}, tokens, segments, positions)[0]).mean()

        return jax.jit(jax.value_and_grad(loss))(p)

    loop_value, loop_grads = value_and_grad(loop_model, loop_params)
    scan_value, scan_grads = value_and_grad(scan_model, params)
    np.testing.assert_allclose(scan_value, loop_value, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
        scan_grads,
        _scanned(loop_grads, loop_model.args.num_layers),
    )


def test_gqa_equals_mha_with_repeated_kv_heads():
    tokens, segments, positions = _stdlib_row(16)
    gqa_model, gqa_params = build(num_kv_heads=2, scan_layers=False)
    assert gqa_params["layer_0"]["attn"]["key"].shape == (128, 2, 32)
    assert gqa_params["layer_0"]["attn"]["query"].shape == (128, 4, 32)
    mha_model = make_model(tiny_config(num_heads=4, num_kv_heads=4, scan_layers=False))
    mha_params = jax.tree.map(lambda x: x, gqa_params)
    for i in range(2):
        attn = dict(mha_params[f"layer_{i}"]["attn"])
        for name in ("key", "value"):
            attn[name] = jnp.repeat(attn[name], 2, axis=1)  # query head h uses kv head h // 2
        mha_params[f"layer_{i}"] = {**mha_params[f"layer_{i}"], "attn": attn}
    a, _ = forward(gqa_model, gqa_params, tokens, segments, positions)
    b, _ = forward(mha_model, mha_params, tokens, segments, positions)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_tracks_float32():
    tokens, segments, positions = _stdlib_row(32)
    model32, params = build()
    model16 = make_model(tiny_config(dtype="bfloat16"))
    a, _ = forward(model32, params, tokens, segments, positions)
    b, _ = forward(model16, params, tokens, segments, positions)
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max()) + 0.02


def test_accelerator_attention_is_refused_on_cpu():
    for impl, needs in (("cudnn", "GPU"), ("splash", "TPU")):
        other = make_model(tiny_config(attention=impl))
        tokens, segments, positions = _stdlib_row(128)
        with pytest.raises(ValueError, match=needs):
            jax.eval_shape(lambda p: other.apply({"params": p}, tokens, segments, positions), param_shapes(other))
    with pytest.raises(ValueError, match="model.attention"):
        model_lib.ModelArgs.from_config(tiny_config(attention="flash").model, 576)
    with pytest.raises(ValueError, match="num_kv_heads"):
        model_lib.ModelArgs.from_config(tiny_config(num_heads=4, num_kv_heads=3).model, 576)


# ---- loss -----------------------------------------------------------------------------------------


def _reference_loss(logits, raw_logits, tokens, segments, vocab_size):
    """Straight numpy loops over the rule written in train_step's docstring."""
    b, l, h, v = logits.shape
    r = 0 if raw_logits is None else raw_logits.shape[2]

    def ce(row, target):
        row = row.astype(np.float64)
        m = row.max()
        return m + math.log(np.exp(row - m).sum()) - row[target]

    total, positions = 0.0, 0
    for i in range(b):
        for t in range(l):
            if segments[i, t] == 0:
                continue
            losses = []
            for k in range(h):
                target = tokens[i, t + 1 + k]
                if target != 0 and target < vocab_size:
                    losses.append(ce(logits[i, t, k, :vocab_size], target))
            for j in range(r):
                targets = tokens[i, t + 1 : t + 2 + h + j]
                if all(64 <= x < 320 for x in targets):
                    losses.append(ce(raw_logits[i, t, j], tokens[i, t + 1 + h + j]))
            if losses:
                total += sum(losses) / len(losses)
                positions += 1
    return total / positions, positions


@pytest.mark.parametrize("heads,raw_heads", [(1, 0), (1, 1), (2, 1)])
def test_loss_matches_reference_rule(heads, raw_heads):
    rng = np.random.default_rng(0)
    batch = packed_batches(1, 3, 40, heads + raw_heads, comp_every=2)[0]
    tokens, segments = batch["tokens"].copy(), batch["segment_ids"].copy()
    tokens[2, 30:], segments[2, 30:] = 0, 0  # trailing padding
    vocab_size, padded = 576, 640
    logits = rng.normal(size=(3, 40, heads, padded)).astype(np.float32) * 3
    logits[..., vocab_size:] = 50.0  # padded rows must not take probability mass
    raw_logits = rng.normal(size=(3, 40, raw_heads, 320)).astype(np.float32) if raw_heads else None
    terms = train_step_lib.loss_terms(
        jnp.asarray(logits), None if raw_logits is None else jnp.asarray(raw_logits), tokens, segments, vocab_size
    )
    want, positions = _reference_loss(logits, raw_logits, tokens, segments, vocab_size)
    assert int(terms["positions"]) == positions
    np.testing.assert_allclose(float(terms["loss_sum"]) / positions, want, rtol=1e-5)
    targets0 = tokens[:, 1:41]
    valid0 = (targets0 != 0) & (segments[:, :40] != 0)
    assert int(terms["raw_targets"]) == int((valid0 & (targets0 >= 64) & (targets0 < 320)).sum())
    assert int(terms["comp_targets"]) == int((valid0 & (targets0 >= 320)).sum())
    assert int(terms["raw_targets"]) > 0 and int(terms["comp_targets"]) > 0
    assert int(terms["tokens"]) == int(valid0.sum())


def test_init_loss_is_log_vocab_and_training_reduces_it():
    config = tiny_config()
    config.data.seq_len, config.data.batch_size = 64, 4
    config.opt.lr, config.opt.warmup_steps, config.train.steps = 3e-3, 5, 25
    config.mesh.shape = (1, 1, 1)
    model = model_lib.Transformer(model_lib.ModelArgs.from_config(config.model, vocab.RAW_VOCAB_SIZE))
    tx, schedule = optimizer_lib.make_optimizer(config.opt, config.train.steps)
    mesh = sharding_lib.make_mesh(config, devices=jax.devices()[:1])
    state, shardings = sharding_lib.init_train_state(config, model, tx, mesh, jax.random.key(0))
    step = train_step_lib.make_train_step(config, model, tx, mesh, shardings, vocab.RAW_VOCAB_SIZE, schedule)
    losses = []
    for batch in packed_batches(25, 4, 64, 1):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    # Heads start at std 0.02: logits have variance ~0.05, so the first loss sits just above ln(320).
    assert abs(losses[0] - math.log(vocab.RAW_VOCAB_SIZE)) < 0.1, losses[0]
    assert np.mean(losses[-5:]) < losses[0] - 2.0, losses
    assert int(state.step) == 25
    assert np.isclose(float(metrics["lr"]), float(schedule(24)))


def test_bench_mfu_smoke_on_cpu(capsys):
    import importlib.util
    import pathlib
    import types

    path = pathlib.Path(__file__).parent.parent / "launch" / "bench_mfu.py"
    spec = importlib.util.spec_from_file_location("bench_mfu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(
        ["--size", "tiny", "--seq_len", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--num_devices", "1",
         "--vocab_size", "576", "--doc_len", "20", "--attention", "xla,cudnn"]
    )
    out = capsys.readouterr().out
    assert "no peak for cpu" in out and "cudnn needs a GPU" in out
    (r,) = results
    assert r["mfu"] is None and r["step_s"] > 0 and np.isfinite(r["loss"])
    h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    v5e = types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")
    assert bench.peak_flops(h100) == 989e12 and bench.peak_flops(v5e) == 197e12


def test_splash_kernel_matches_xla_attention_in_interpret_mode():
    """The TPU kernel, run by the Pallas interpreter, agrees with the einsum path (per shard: tests/multidevice)."""
    q, k, v, segments = packed_attention_inputs()
    want = np.asarray(attention_lib.attention(q, k, v, segments, segments, "xla"))
    real = segments != 0  # splash lets padding attend to padding; those rows are never used
    splash = jax.jit(lambda *x: attention_lib.splash_attention(*x, interpret=True))
    np.testing.assert_allclose(np.asarray(splash(q, k, v, segments, segments))[real], want[real], atol=2e-5)
