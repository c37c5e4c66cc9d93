"""Speculative greedy decoding writes exactly the bytes plain greedy decoding writes, in fewer passes.

The models are tiny (2 layers, d_model 64, float32) and trained here with a plain optax loop on
packed standard-library files: head ``h`` learns the id ``t + 1 + h``, raw head ``j`` the id
``t + 1 + num_pred_heads + j``. A snapshot after a few steps (drafts often rejected) and one after a
couple hundred steps (drafts often accepted) are compared with ``generate.generate(temperature=0)``;
models with fewer heads are the same network with the extra heads cut off.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from proxy_jax import generate as generate_lib
from proxy_jax import speculative
from proxy_jax import vocab
from proxy_jax.model import ModelArgs, Transformer
from stdlib_batches import packed_batches, stdlib_docs

NEW = 24
SEQ = 128
ARGS = ModelArgs(
    vocab_size=vocab.RAW_VOCAB_SIZE, padded_vocab_size=384, num_layers=2, d_model=64, num_heads=4,
    num_kv_heads=2, head_dim=16, d_ff=192, num_pred_heads=4, num_raw_pred_heads=1, dtype="float32",
)


def train(args: ModelArgs, steps: int, snapshot_at=(), lr=3e-3, batch_size=16, seed=0):
    """Adam on the multi-head cross-entropy over packed stdlib rows; returns {step: params}."""
    model = Transformer(args)
    h, r = args.num_pred_heads, args.num_raw_pred_heads
    batches = packed_batches(steps, batch_size, SEQ, h + r)
    z = jnp.zeros((1, 1), jnp.int32)
    params = jax.jit(lambda key: nn.unbox(model.init(key, z, z, z)["params"]))(jax.random.key(seed))
    opt = optax.adam(lr)

    def loss_fn(params, tokens, segments, positions):
        logits_BxLxHxV, raw_BxLxRxC = model.apply({"params": params}, tokens[:, :SEQ], segments[:, :SEQ],
                                                  positions[:, :SEQ])
        loss = 0.0
        for k in range(h + r):
            target_BxL = tokens[:, 1 + k : 1 + k + SEQ]
            logits = logits_BxLxHxV[:, :, k] if k < h else raw_BxLxRxC[:, :, k - h]
            loss += optax.softmax_cross_entropy_with_integer_labels(logits, target_BxL).mean()
        return loss / (h + r)

    @jax.jit
    def step(params, state, tokens, segments, positions):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, segments, positions)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state, snapshots, losses = opt.init(params), {}, []
    for i, batch in enumerate(batches, start=1):
        params, state, loss = step(params, state, batch["tokens"], batch["segment_ids"], batch["positions"])
        losses.append(float(loss))
        if i in snapshot_at or i == steps:
            snapshots[i] = params
    assert losses[-1] < losses[0]  # the loop learns
    return snapshots


def fewer_heads(args: ModelArgs, params, num_pred_heads: int, num_raw_pred_heads: int):
    """The same network keeping only its first heads (what a model trained with fewer heads looks like)."""
    small = dataclasses.replace(args, num_pred_heads=num_pred_heads, num_raw_pred_heads=num_raw_pred_heads)
    params = dict(params, head=params["head"][:, :num_pred_heads])
    if num_raw_pred_heads:
        params["raw_head"] = params["raw_head"][:, :num_raw_pred_heads]
    else:
        params.pop("raw_head")
    return Transformer(small), params


@pytest.fixture(scope="module")
def snapshots():
    return train(ARGS, 200, snapshot_at=(15,))


@pytest.fixture(scope="module")
def prompts():
    docs = stdlib_docs(40)
    return [docs[30][:40], docs[31][:7], docs[32][:23]]  # three different lengths in one batch


def compare(model, params, prompts, **kw):
    want = generate_lib.generate(model, params, prompts, max_new_bytes=NEW, temperature=0.0, **kw)
    got, stats = speculative.generate_speculative(model, params, prompts, max_new_bytes=NEW, **kw)
    assert got == want
    return got, stats


@pytest.mark.parametrize("heads,raw", [(1, 0), (1, 1), (2, 0), (2, 1), (4, 0), (4, 1)])
def test_weak_model_matches_plain_greedy(snapshots, prompts, heads, raw):
    """After 15 steps drafts are mostly wrong: rejection paths must still give greedy's bytes."""
    model, params = fewer_heads(ARGS, snapshots[15], heads, raw)
    got, stats = compare(model, params, prompts)
    assert stats["row_passes"] * stats["bytes_per_pass"] == stats["bytes_generated"] == sum(map(len, got))
    assert len(stats["accepted_histogram"]) == heads + raw
    if heads + raw == 1:
        assert stats["forward_passes"] == NEW  # no drafts: one byte per pass, as plain decoding


@pytest.mark.parametrize("heads,raw", [(2, 1), (4, 0)])
def test_batch_of_one_matches_plain_greedy(snapshots, prompts, heads, raw):
    model, params = fewer_heads(ARGS, snapshots[200], heads, raw)
    compare(model, params, prompts[1:2])


def test_trained_model_accepts_drafts_and_matches_greedy(snapshots, prompts):
    """The brief's model: 4 heads, no raw head; drafts are both accepted and rejected in one batch."""
    model, params = fewer_heads(ARGS, snapshots[200], 4, 0)
    got, stats = compare(model, params, prompts)
    hist = stats["accepted_histogram"]
    assert hist[0] > 0 and sum(hist[1:]) > 0
    assert stats["bytes_per_pass"] > 1.2
    assert stats["forward_passes"] < NEW
    assert all(len(x) == NEW for x in got)


def test_raw_head_extends_the_draft(snapshots, prompts):
    model, params = fewer_heads(ARGS, snapshots[200], 4, 1)
    _, with_raw = compare(model, params, prompts)
    _, without = speculative.generate_speculative(model, params, prompts, max_new_bytes=NEW, num_draft=3)
    assert len(with_raw["accepted_histogram"]) == 5 and len(without["accepted_histogram"]) == 4
    assert with_raw["bytes_per_pass"] >= without["bytes_per_pass"] - 0.25


def test_stop_strings_and_stop_ids_end_rows_as_plain_greedy(snapshots, prompts):
    model, params = fewer_heads(ARGS, snapshots[200], 4, 1)
    full, _ = speculative.generate_speculative(model, params, prompts, max_new_bytes=NEW)
    stop = [full[0][5:7], full[2][9:10]]
    got, _ = compare(model, params, prompts, stop=stop)
    assert any(len(x) < NEW for x in got)
    # EOS's head-0 column becomes a slightly louder copy of the space byte's: where greedy would write
    # a space (with a positive logit) it now stops, so rows end early at different places.
    space = ord(" ") + vocab.BYTE_OFFSET
    head = params["head"].at[:, 0, vocab.EOS].set(1.01 * params["head"][:, 0, space])
    got, stats = compare(model, dict(params, head=head), prompts)
    assert any(len(x) < NEW for x in got)
    assert stats["bytes_generated"] == sum(len(x) + (len(x) < NEW) for x in got)


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="num_draft=5"):
        speculative.generate_speculative(ARGS, None, [b"x"], max_new_bytes=4, num_draft=5)
    with pytest.raises(ValueError, match="max_new_bytes=0"):
        speculative.generate_speculative(ARGS, None, [b"x"], max_new_bytes=0)
    assert speculative.generate_speculative(ARGS, None, [], max_new_bytes=4)[0] == []
