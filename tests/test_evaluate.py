"""Raw-byte evaluation: windowing invariants on stdlib files and the compressor baselines."""

import os
import sysconfig

import numpy as np
import pytest

import helpers
from proxy_jax import text_format, vocab
from proxy_jax.evaluation import bpb as evaluate


def stdlib_docs(n, max_bytes=6000):
    return helpers.stdlib_docs(n, max_bytes)


@pytest.mark.parametrize("window,extra", [(64, 1), (257, 2), (4096, 1)])
def test_rows_score_every_raw_byte_once(window, extra):
    docs = stdlib_docs(12) + [b"", b"x"]
    rows = list(evaluate.eval_rows(docs, window, extra))
    stream = np.concatenate([text_format.SENTINEL.document_ids(d) for d in docs])
    # Head-0 targets of row r are stream[r*window + 1 : (r+1)*window + 1]: every token after the first once.
    targets = np.concatenate([r["tokens"][1 : window + 1] for r in rows])
    valid = targets[: stream.size - 1]
    np.testing.assert_array_equal(valid, stream[1:])
    assert np.all(targets[stream.size - 1 :] == vocab.PAD)
    raw_targets = int(np.sum(vocab.is_raw_byte(targets)))
    assert raw_targets == sum(len(d) for d in docs)
    for r in rows:
        assert r["tokens"].shape == (window + extra,)
        toks, seg, pos = r["tokens"], r["segment_ids"], r["positions"]
        live = toks != vocab.PAD
        # Segments restart at every BOS; positions are 0 at BOS and count up inside a document.
        assert np.all(pos[live][toks[live] == vocab.BOS] == 0)
        steps = np.diff(seg[live])
        assert set(np.unique(steps)) <= {0, 1}
        new_doc = np.flatnonzero(steps == 1) + 1
        assert np.all(toks[live][new_doc] == vocab.BOS)
        same = steps == 0
        assert np.all(np.diff(pos[live])[same] == 1)


def test_batched_pads_with_empty_rows():
    rows = list(evaluate.eval_rows(stdlib_docs(3), 128, 1))
    batches = list(evaluate.batched(iter(rows), 4))
    assert sum(b["tokens"].shape[0] for b in batches) == 4 * len(batches)
    total = sum(int(np.sum(b["tokens"] != 0)) for b in batches)
    assert total == sum(int(np.sum(r["tokens"] != 0)) for r in rows)


def test_compressor_bpb_orders_and_bounds():
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()]
    code = stdlib_docs(20, max_bytes=1 << 30)
    noisy, real = evaluate.compressor_bpb(noise), evaluate.compressor_bpb(code)
    # Incompressible data costs about 8 bits per byte; whole source files far less, xz below gzip.
    assert noisy["gzip_bpb"] > 7.9 and noisy["xz_bpb"] > 7.9
    assert 1.0 < real["xz_bpb"] < real["gzip_bpb"] < 4.0


def _toy_encode(doc: bytes) -> np.ndarray:
    """A lossy stand-in for a proxy: every third byte mod 64, as compressed symbol ids."""
    return vocab.COMP_OFFSET + (np.frombuffer(doc, np.uint8)[::3] % 64).astype(np.int32)


def test_document_formats():
    doc = b"ab\x00\xff"
    raw = list(vocab.encode_raw(doc))
    assert list(text_format.get("sentinel").document_ids(doc)) == [1, 12, *raw, 13, 2]
    assert list(text_format.get("plain").document_ids(doc)) == [1, *raw, 2]
    assert list(text_format.get("compressed").document_ids(doc, _toy_encode)) == [1, *_toy_encode(doc), 2]
    assert list(text_format.get("plain").document_ids(b"")) == [1, 2]
    with pytest.raises(ValueError, match="proxy encode"):
        text_format.get("compressed").document_ids(doc)
    with pytest.raises(ValueError, match="text format 'bytes'"):
        text_format.get("bytes")
    with pytest.raises(ValueError, match="id 0 < 320"):
        text_format.COMPRESSED.document_ids(doc, lambda d: np.frombuffer(d, np.uint8).astype(np.int32))


@pytest.mark.parametrize("fmt", text_format.NAMES)
def test_bpb_matches_an_independent_per_document_computation(fmt):
    """Packed, batched, sharded scoring equals running the model on each document piece alone; in every
    text format the bits are divided by the documents' raw bytes."""
    import jax
    import jax.numpy as jnp

    from proxy_jax import config as config_lib
    from proxy_jax import model as model_lib
    from proxy_jax import recipes
    from proxy_jax import optimizer, sharding, train_step

    config = config_lib.base_config()
    recipes.apply_size(config, "tiny")
    config.model.dtype = "float32"
    config.model.num_layers = 1
    window, batch_size = 64, 8
    symbols = 64 if fmt == "compressed" else 0
    encode = _toy_encode if fmt == "compressed" else None
    args = model_lib.ModelArgs.from_config(config.model, vocab.vocab_size(symbols))
    model = model_lib.Transformer(args)
    mesh = sharding.make_mesh(config)
    tx, _ = optimizer.make_optimizer(config.opt, 10)
    state, shardings = sharding.init_train_state(config, model, tx, mesh, jax.random.key(3))
    step = train_step.make_eval_step(config, model, mesh, shardings, vocab.vocab_size(symbols))
    docs = [d[:150] for d in stdlib_docs(6)] + [b"", bytes(range(256))[:90]]

    def host_eval(batch):
        return {k: float(v) for k, v in jax.device_get(step(state.params, batch)).items()}

    packed = evaluate.raw_bpb(host_eval, docs, window=window, extra=1, batch_size=batch_size, fmt=fmt,
                              encode=encode)

    apply = jax.jit(lambda p, t, s, q: model.apply({"params": p}, t, s, q))

    # Independent: the context of a target is its own document's tokens inside the same window.
    ids = [text_format.get(fmt).document_ids(d, encode) for d in docs]
    stream = np.concatenate(ids)
    starts = np.cumsum([0] + [d.size for d in ids])
    scored = vocab.is_comp if fmt == "compressed" else vocab.is_raw_byte
    nll, count = 0.0, 0
    for lo in range(0, stream.size - 1, window):
        hi = min(lo + window, stream.size - 1)  # input positions of this window
        for d in range(len(docs)):
            a, b = max(lo, starts[d]), min(hi, starts[d + 1])
            if a >= b:
                continue
            # Right-padded to one shape (one compile); causality keeps the padding out of earlier logits.
            toks, seg, pos = (np.zeros((1, window), np.int32) for _ in range(3))
            toks[0, : b - a], seg[0, : b - a], pos[0, : b - a] = stream[a:b], 1, np.arange(a, b) - starts[d]
            logits, _ = apply(state.params, toks, seg, pos)
            logp = jax.nn.log_softmax(np.asarray(logits[0, : b - a, 0, : vocab.vocab_size(symbols)], np.float64),
                                      axis=-1)
            targets = stream[a + 1 : b + 1]
            counted = scored(targets)
            nll -= float(np.sum(np.asarray(logp)[np.arange(b - a), targets][counted]))
            count += int(counted.sum())
    raw_bytes = sum(len(d) for d in docs)
    assert packed["raw_bytes"] == raw_bytes
    assert count == (sum(len(_toy_encode(d)) for d in docs) if fmt == "compressed" else raw_bytes)
    independent = nll / (np.log(2) * raw_bytes)
    assert abs(packed["raw_bpb"] - independent) < 1e-4 * independent
    # An untrained model is near-uniform over its ids: ln(320) or ln(384) nats per scored target.
    per_target = 8.58 if fmt == "compressed" else 8.32
    assert 0.85 * per_target * count / raw_bytes < independent < 1.2 * per_target * count / raw_bytes
