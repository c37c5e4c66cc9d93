"""Speculative greedy decoding writes exactly the bytes plain greedy decoding writes, in fewer passes.

The models are tiny (2 layers, d_model 64, float32) and trained here with a plain optax loop: head
``h`` learns the id ``t + 1 + h``, raw head ``j`` the id ``t + 1 + num_pred_heads + j``. A few steps
on a salad of a handful of words (drafts accepted inside words, rejected between them) and, marked
slow, a couple hundred steps on packed standard-library files; every result is compared with
``generate.generate(temperature=0)``. Models with fewer heads are the same network with the extra
heads cut off.
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
STEPS, WORD_STEPS = 200, 60
WORDS = [b"def ", b"self", b"(x, y)", b":\n", b"    ", b"return ", b"import os\n"]
SEQ = 128
ARGS = ModelArgs(
    vocab_size=vocab.RAW_VOCAB_SIZE, padded_vocab_size=384, num_layers=2, d_model=64, num_heads=4,
    num_kv_heads=2, head_dim=16, d_ff=192, num_pred_heads=4, num_raw_pred_heads=1, dtype="float32",
)


def word_batches(num_batches: int, batch_size: int, num_targets: int, seed=0):
    """Windows of one document of WORDS in random order: words are predictable inside, not between."""
    rng = np.random.default_rng(seed)
    text = b"".join(WORDS[i] for i in rng.integers(0, len(WORDS), 4000))
    stream = np.concatenate([[vocab.BOS, vocab.RAW_OPEN], vocab.encode_raw(text)]).astype(np.int32)
    row = SEQ + num_targets
    for _ in range(num_batches):
        starts = rng.integers(0, len(stream) - row, batch_size)
        tokens = np.stack([stream[s : s + row] for s in starts])
        yield {"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": starts[:, None] + np.arange(row)}


def train(args: ModelArgs, batches, lr=3e-3, seed=0):
    """Adam on the multi-head cross-entropy of rows of SEQ + heads ids; returns the params."""
    model = Transformer(args)
    h, r = args.num_pred_heads, args.num_raw_pred_heads
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

    state, losses = opt.init(params), []
    for batch in batches:
        params, state, loss = step(params, state, batch["tokens"], batch["segment_ids"], batch["positions"])
        losses.append(float(loss))
    assert losses[-1] < losses[0]  # the loop learns
    return params


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
def word_params():
    """A few steps on a word salad: drafts inside a word are accepted, at word boundaries rejected."""
    return train(ARGS, word_batches(WORD_STEPS, 16, ARGS.num_targets))


@pytest.fixture(scope="module")
def stdlib_params():
    """A couple hundred steps on packed standard-library files."""
    return train(ARGS, packed_batches(STEPS, 16, SEQ, ARGS.num_targets))


@pytest.fixture(scope="module")
def prompts():
    return [b"def self(x, y):\n    return ", b"import os\n", b"self"]  # three lengths in one batch


@pytest.fixture(scope="module")
def code_prompts():
    docs = stdlib_docs(40)
    return [docs[30][:40], docs[31][:7], docs[32][:23]]


def compare(model, params, prompts, **kw):
    want = generate_lib.generate(model, params, prompts, max_new_bytes=NEW, temperature=0.0, **kw)
    got, stats = speculative.generate_speculative(model, params, prompts, max_new_bytes=NEW, **kw)
    assert got == want
    return got, stats


SLOW = pytest.mark.slow  # each head layout compiles its own decoding functions


@pytest.mark.parametrize(
    "heads,raw",
    [(2, 1), (4, 0), (4, 1), pytest.param(1, 0, marks=SLOW), pytest.param(1, 1, marks=SLOW),
     pytest.param(2, 0, marks=SLOW)],
)
def test_word_model_matches_plain_greedy(word_params, prompts, heads, raw):
    model, params = fewer_heads(ARGS, word_params, heads, raw)
    got, stats = compare(model, params, prompts)
    hist = stats["accepted_histogram"]
    assert stats["row_passes"] * stats["bytes_per_pass"] == stats["bytes_generated"] == sum(map(len, got))
    assert len(stats["accepted_histogram"]) == heads + raw
    if heads + raw == 1:
        assert stats["forward_passes"] == NEW  # no drafts: one byte per pass, as plain decoding
    else:
        assert hist[0] > 0 and sum(hist[1:]) > 0  # rows both reject and accept drafts


@pytest.mark.parametrize("heads,raw", [(4, 1), pytest.param(2, 1, marks=SLOW)])
def test_batch_of_one_matches_plain_greedy(word_params, prompts, heads, raw):
    model, params = fewer_heads(ARGS, word_params, heads, raw)
    compare(model, params, prompts[1:2])


@SLOW
def test_stdlib_model_accepts_drafts_and_matches_greedy(stdlib_params, code_prompts):
    """4 main heads trained on real code: more than one byte per pass, identical bytes."""
    model, params = fewer_heads(ARGS, stdlib_params, 4, 0)
    got, stats = compare(model, params, code_prompts)
    assert sum(stats["accepted_histogram"][1:]) > 0
    assert stats["bytes_per_pass"] > 1.2
    assert stats["forward_passes"] < NEW
    assert all(len(x) == NEW for x in got)


@SLOW
def test_raw_head_extends_the_draft(word_params, prompts):
    model, params = fewer_heads(ARGS, word_params, 4, 1)
    _, with_raw = compare(model, params, prompts)
    _, without = speculative.generate_speculative(model, params, prompts, max_new_bytes=NEW, num_draft=3)
    assert len(with_raw["accepted_histogram"]) == 5 and len(without["accepted_histogram"]) == 4
    assert with_raw["bytes_per_pass"] >= without["bytes_per_pass"] - 0.25


def test_stop_strings_and_stop_ids_end_rows_as_plain_greedy(word_params, prompts):
    model, params = fewer_heads(ARGS, word_params, 4, 1)
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
