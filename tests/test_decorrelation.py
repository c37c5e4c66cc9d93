"""Rows of a batch come from different documents, on a long-tailed JSONL corpus, and resume exactly."""

import json

import numpy as np
import pytest

from helpers import config_with
from proxy_jax import vocab
from proxy_jax.data import corpus
from proxy_jax.data import pipeline

L, B, BATCHES = 4096, 8, 150


def _long_tailed_jsonl(path, n=600, seed=0):
    """``n`` documents with lognormal lengths (median 6 kB, a few past 100 kB) of printable random bytes."""
    rng = np.random.default_rng(seed)
    sizes = np.maximum(1, rng.lognormal(np.log(6000), 1.2, n).astype(int))
    assert np.median(sizes) > 5000 and sizes.max() > 100_000
    docs = []
    with open(path, "w") as f:
        for size in sizes:
            text = bytes(rng.integers(32, 127, size, dtype=np.uint8)).decode()
            docs.append(text.encode())
            f.write(json.dumps({"text": text}) + "\n")
    return docs


def _bytes_config(path):
    return config_with("configs/bytes.py:tiny", **{
        "data.source": "jsonl", "data.path": str(path), "data.val_fraction": 0.0, "data.max_doc_bytes": 0,
        "data.seq_len": L, "data.batch_size": B, "model.num_pred_heads": 1, "model.num_raw_pred_heads": 0})


@pytest.mark.slow  # ~30 s on 2 shared cores: 150 batches of 32 kB and a restore
def test_long_tailed_corpus_gives_decorrelated_batches_that_resume_exactly(tmp_path):
    docs = _long_tailed_jsonl(tmp_path / "c.jsonl")
    config = _bytes_config(tmp_path / "c.jsonl")
    source = corpus.load_split(config.data, "train")
    assert len(source) == len(docs)
    by_text = {d: i for i, d in enumerate(docs)}
    placed = []  # (row, start in the row stream, length, document bytes)

    def hook(**d):
        placed.append((d["row"], d["start"], source[d["index"]]))

    it = iter(pipeline.make_pipeline(config, "train", source=source, process_index=0, process_count=1,
                                      on_document=hook))
    batches = [next(it) for _ in range(80)]
    state = json.loads(json.dumps(it.get_state()))  # after batch 80 (index 79)
    batches += [next(it) for _ in range(BATCHES - 80)]

    distinct, single = [], 0
    for k, b in enumerate(batches):
        first = []
        for r in range(B):
            # The document under the row's first token, from where the packer placed it (``1 bytes 2``) ...
            row_start, data = max((s, d) for rr, s, d in placed if rr == r and s <= k * L)
            offset = k * L - row_start
            assert offset < len(data) + 2
            # ... checked against the tokens themselves: they continue that document's bytes.
            raw = b["tokens"][r][: max(0, len(data) + 1 - offset)]
            want = np.concatenate([[vocab.BOS], vocab.encode_raw(data), [vocab.EOS]])[offset: offset + len(raw)]
            np.testing.assert_array_equal(raw, want)
            first.append(by_text[data])
        distinct.append(len(set(first)))
        single += len(set(first)) == 1
    assert np.mean(distinct) >= 6.5 and single <= 0.01 * BATCHES, (np.mean(distinct), single)

    # A pipeline restored from the state after batch 70 reproduces batches 71-80.
    it = iter(pipeline.make_pipeline(config, "train", source=source, process_index=0, process_count=1))
    for _ in range(70):
        next(it)
    state70 = json.loads(json.dumps(it.get_state()))
    fresh = iter(pipeline.make_pipeline(config, "train", source=source, process_index=0, process_count=1))
    fresh.set_state(state70)
    for k in range(70, 80):
        got = next(fresh)
        for key in got:
            np.testing.assert_array_equal(got[key], batches[k][key], err_msg=f"{key} of batch {k + 1}")
    assert fresh.get_state() == state
