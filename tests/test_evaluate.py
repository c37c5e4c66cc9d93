"""Raw-byte evaluation: windowing invariants on stdlib files and the compressor baselines."""

import os
import sysconfig

import numpy as np
import pytest

from proxy_jax import evaluate, vocab


def stdlib_docs(n, max_bytes=6000):
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(p for p in os.listdir(root) if p.endswith(".py"))[:n]
    docs = []
    for p in paths:
        with open(os.path.join(root, p), "rb") as f:
            docs.append(f.read()[:max_bytes])
    return docs


@pytest.mark.parametrize("window,extra", [(64, 1), (257, 2), (4096, 1)])
def test_rows_score_every_raw_byte_once(window, extra):
    docs = stdlib_docs(12) + [b"", b"x"]
    rows = list(evaluate.eval_rows(docs, window, extra))
    stream = np.concatenate([evaluate.raw_document_ids(d) for d in docs])
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
