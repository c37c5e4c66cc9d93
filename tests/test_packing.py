"""Packing: one stream per row with a K-token overlap between batches, segment ids, positions, step-exact draws."""

import functools
import json
import gzip

import grain
import numpy as np
import pytest

from helpers import mix_config, stdlib_paths
from proxy_jax import vocab
from proxy_jax.data import mixing
from proxy_jax.data import packing
from proxy_jax.data import schedule

PATHS = [str(p) for p in stdlib_paths(120)]


def _load(i, short=False):
    i = i % len(PATHS)
    with open(PATHS[i], "rb") as f:
        data = f.read()
    # Short documents: many per batch and many spills.
    data = data[: 8 + 5 * (i % 7)] if short else data[: 64 + 37 * (i % 9)]
    comp = vocab.encode_comp(np.frombuffer(gzip.compress(data, mtime=0), np.uint8))
    return {"index": i, "epoch": 0, "raw": vocab.encode_raw(data), "comp": comp}


def _element(flat, _, short=False):
    return {"flat": flat, **_load(flat, short)}


def _docs(short=False, n=3 * len(PATHS)):
    return grain.MapDataset.range(n).map_with_index(functools.partial(_element, short=short))


def _mix(mode="translation_random", w=40):
    return mix_config(warmup=w, modes=(mode, "sentinel", "sentinel"))


def _packer(*, L=50, K=2, B=3, mode="translation_random", seed=0, start_step=0, hook=None, short=False,
            positions="row"):
    return packing.PackedBatchDataset(_docs(short), seq_len=L, num_targets=K, rows=B, seed=seed, mix=_mix(mode),
                                      positions=positions, start_step=start_step, on_document=hook)


def _run(n_batches, **kw):
    docs = []
    it = iter(_packer(hook=lambda **d: docs.append(d), **kw))
    batches = [next(it) for _ in range(n_batches)]
    return batches, docs


def _streams_from_hook(docs, mix, B, seed=0, short=False):
    """Rebuilds the B row streams independently: each document goes to the shortest row (lowest on ties)
    and is re-drawn from the step of the position where it starts."""
    parts, starts, owners = [[] for _ in range(B)], [[] for _ in range(B)], [[] for _ in range(B)]
    length = [0] * B
    for d in docs:
        r = min(range(B), key=lambda i: (length[i], i))
        assert d["row"] == r and d["start"] == length[r]
        el = _load(d["index"], short)
        rate, mode = schedule.schedule_at(d["step"], mix)
        u_c, u_o = mixing.document_uniforms(seed, d["index"], d["epoch"], d["step"])
        e = mixing.emit_document(el["raw"], el["comp"], mode=mode, rate=rate, u_choice=u_c, u_order=u_o)
        starts[r].extend(length[r] + s for s in e.doc_starts)
        parts[r].append(e.ids)
        owners[r].append((length[r], length[r] + len(e.ids), d["index"]))
        length[r] += len(e.ids)
    return [np.concatenate(p) for p in parts], starts, owners


@pytest.mark.parametrize("mode,K", [("translation_random", 2), ("parallel_random", 1), ("sentinel", 3)])
def test_rows_tile_their_row_streams_exactly(mode, K):
    L, B, n = 50, 3, 25
    batches, docs = _run(n, L=L, K=K, B=B, mode=mode)
    streams, _, _ = _streams_from_hook(docs, _mix(mode), B)
    for k, b in enumerate(batches):
        assert b["tokens"].shape == (B, L + K)
        for r in range(B):
            np.testing.assert_array_equal(b["tokens"][r], streams[r][k * L: k * L + L + K])
            if k:  # a row continues in the next batch, overlapping by exactly K tokens
                np.testing.assert_array_equal(batches[k - 1]["tokens"][r][L:], b["tokens"][r][:K])
    for r in range(B):  # rows minus overlaps give back each stream: nothing lost, nothing duplicated
        np.testing.assert_array_equal(np.concatenate([b["tokens"][r][:L] for b in batches]), streams[r][: n * L])


def test_rows_of_a_batch_start_in_different_documents():
    """One long document fills one row, not the batch: the B rows start in B different documents."""
    L, K, B, n = 50, 2, 4, 30
    batches, docs = _run(n, L=L, K=K, B=B, mode="sentinel")
    _, _, owners = _streams_from_hook(docs, _mix("sentinel"), B)
    for k in range(n):
        first = [next(i for s, e, i in owners[r] if s <= k * L < e) for r in range(B)]
        assert len(set(first)) == B, (k, first)


def _expected_positions(stream):
    pos = np.zeros(len(stream), np.int64)
    for t in range(1, len(stream)):
        pos[t] = 0 if stream[t - 1] == vocab.EOS else pos[t - 1] + 1
    return pos


@pytest.mark.parametrize("positions", ["row", "document"])
def test_segment_ids_and_positions(positions):
    L, K, B, n = 50, 2, 3, 25
    batches, docs = _run(n, L=L, K=K, B=B, mode="parallel_random", positions=positions)
    streams, _, _ = _streams_from_hook(docs, _mix("parallel_random"), B)
    seen_spill = False
    for k, b in enumerate(batches):
        assert b["tokens"].dtype == b["segment_ids"].dtype == b["positions"].dtype == np.int32
        for r in range(B):
            piece = streams[r][k * L: k * L + L + K]
            if positions == "document":  # counted from the BOS, across batches
                want = _expected_positions(streams[r])[k * L: k * L + L + K]
            else:  # counted from the row start or the last EOS inside the row
                want = _expected_positions(piece)
            np.testing.assert_array_equal(b["positions"][r], want)
            seg = b["segment_ids"][r]
            assert seg[0] == 1 and seg.min() >= 1
            toks = b["tokens"][r]
            # A new segment starts exactly after every EOS, and only there; it starts with BOS.
            np.testing.assert_array_equal(np.diff(seg), (toks[:-1] == vocab.EOS).astype(np.int32))
            np.testing.assert_array_equal(b["positions"][r][1:][np.diff(seg) == 1], 0)
            assert np.all(toks[1:][np.diff(seg) == 1] == vocab.BOS)
            seen_spill |= toks[0] != vocab.BOS and b["positions"][r][0] > 0
    assert seen_spill == (positions == "document")  # rows starting mid-document continue, or restart at 0


def test_document_counters():
    L, K, B, n = 50, 2, 3, 25
    batches, docs = _run(n, L=L, K=K, B=B, mode="parallel_random")
    streams, starts, _ = _streams_from_hook(docs, _mix("parallel_random"), B)
    for k, b in enumerate(batches):
        for r in range(B):
            row_starts = np.array(starts[r])
            in_row = (row_starts >= k * L) & (row_starts < k * L + L)
            assert b["num_docs"][r] == in_row.sum()
            assert b["num_docs"][r] == np.sum(b["tokens"][r][:L] == vocab.BOS)
            comp_open = streams[r][row_starts[in_row] + 1] == vocab.COMP_OPEN  # parallel: one stream per document
            assert b["num_comp_docs"][r] == b["num_comp_streams"][r] == comp_open.sum()
            assert b["num_streams"][r] == b["num_docs"][r]


def test_every_document_draws_with_its_batch_step():
    """Warm-up where the rate changes every step; re-derive each document's arrangement from the batch step."""
    L, K, B, n = 40, 2, 2, 40
    mode = "translation_random"
    mix = _mix(mode, w=40)
    batches, docs = _run(n, L=L, K=K, B=B, mode=mode, short=True)
    by_start = {(d["row"], d["start"]): d for d in docs}
    checked = 0
    rates = set()
    for k, b in enumerate(batches):
        step = int(b["step"][0])
        assert step == k and np.all(b["step"] == k)
        rate, mode_k = schedule.schedule_at(step, mix)
        rates.add(rate)
        for r in range(B):
            toks = b["tokens"][r]
            for t in np.flatnonzero(toks[:L] == vocab.BOS):
                d = by_start[(r, k * L + int(t))]
                assert d["step"] == step and d["rate"] == rate and d["mode"] == mode_k
                u_c, u_o = mixing.document_uniforms(0, d["index"], d["epoch"], step)
                arrangement = mixing.choose_arrangement(mode_k, rate, u_c, u_o)
                assert arrangement == d["arrangement"]
                # The batch itself shows the arrangement: the first stream's sentinel and whether a pair follows.
                if t + 1 < len(toks):
                    first = toks[t + 1]
                    assert first == (vocab.COMP_OPEN if arrangement in (mixing.COMP, mixing.PAIR_COMP_FIRST)
                                     else vocab.RAW_OPEN)
                checked += 1
    assert checked > 50 and len(rates) == n


@pytest.mark.parametrize("positions", ["row", "document"])
def test_state_restore_continues_exactly(positions):
    L, K, B = 50, 2, 3
    reference = []
    it = iter(_packer(L=L, K=K, B=B, mode="parallel_random", positions=positions))
    for _ in range(30):
        reference.append(next(it))
    for cut in (0, 1, 7, 13, 29):
        it = iter(_packer(L=L, K=K, B=B, mode="parallel_random", positions=positions))
        for _ in range(cut):
            next(it)
        state = it.get_state()
        state = json.loads(json.dumps(state))  # JSON round trip, as in a checkpoint
        fresh = iter(_packer(L=L, K=K, B=B, mode="parallel_random", positions=positions))
        next(fresh)  # a used iterator is restored as well as a fresh one
        fresh.set_state(state)
        for k in range(cut, 30):
            got = next(fresh)
            for key in reference[k]:
                np.testing.assert_array_equal(got[key], reference[k][key], err_msg=f"{key} at {k} after {cut}")


def test_start_step_reproduces_the_same_batches():
    reference, _ = _run(12)
    it = iter(_packer(start_step=9))
    for k in range(9, 12):
        got = next(it)
        for key in reference[k]:
            np.testing.assert_array_equal(got[key], reference[k][key])


def test_finite_parent_ends_cleanly():
    ds = packing.PackedBatchDataset(_docs(n=3), seq_len=32,
                                    num_targets=1, rows=2, seed=0, mix=_mix())
    batches = list(ds)
    assert len(batches) >= 1
    assert all(b["tokens"].shape == (2, 33) for b in batches)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rows=0"):
        packing.PackedBatchDataset(_docs(), seq_len=8, num_targets=1, rows=0, seed=0, mix=_mix())
    with pytest.raises(ValueError, match="start_step=-2"):
        packing.PackedBatchDataset(_docs(), seq_len=8, num_targets=1, rows=1, seed=0, mix=_mix(), start_step=-2)
    with pytest.raises(ValueError, match="positions='abs'"):
        packing.PackedBatchDataset(_docs(), seq_len=8, num_targets=1, rows=1, seed=0, mix=_mix(), positions="abs")
