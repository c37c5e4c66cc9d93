"""Entropy segmentation: boundary rules, the global threshold, and batch-independent M1 entropies."""

import numpy as np
import pytest

from proxy_jax.proxies.neural import m1 as m1_lib
from proxy_jax.proxies.neural import segment
import neural_helpers as nh


@pytest.mark.parametrize("min_bytes", [1, 4])
def test_segment_starts_rules(min_bytes):
    rng = np.random.default_rng(min_bytes)
    for n in (0, 1, 7, 100, 333):
        ent = rng.gamma(2.0, 1.0, n).astype(np.float32)
        thr, chunk = 3.0, 64
        starts = segment.segment_starts(ent, thr, chunk, min_bytes)
        doc = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        parts = segment.split(doc, starts)
        assert b"".join(parts) == doc
        assert all(0 < len(p) <= chunk for p in parts)
        assert starts == sorted(set(starts)) and (not n or starts[0] == 0)
        assert set(range(0, n, chunk)) <= set(starts)
        for a, b in zip(starts, starts[1:]):
            assert b % chunk == 0 or (ent[b] > thr and b - a >= min_bytes)
        if min_bytes == 1:  # every high-entropy byte starts a segment
            assert {i for i in range(n) if ent[i] > thr} <= set(starts)


def test_threshold_is_the_global_quantile():
    rng = np.random.default_rng(0)
    ents = [rng.exponential(2.0, k).astype(np.float32) for k in (10, 1000, 5000)]
    thr = segment.entropy_threshold(ents, 0.9)
    above = np.mean(np.concatenate(ents) > thr)
    assert abs(above - 0.1) < 0.002
    with pytest.raises(ValueError, match="entropy_quantile=1.5"):
        segment.entropy_threshold(ents, 1.5)


def test_entropies_do_not_depend_on_batching_and_restart_per_chunk():
    args = nh.tiny_args()
    model = m1_lib.M1.from_params(args, nh.init_params(args), context=64)
    files = nh.stdlib_files()
    docs = [open(f, "rb").read()[:150] for f in files[:6]]
    together = segment.doc_entropies(model, docs, chunk_bytes=64, tile_positions=512)
    alone = segment.doc_entropies(model, docs[2:3], chunk_bytes=64, tile_positions=512)
    np.testing.assert_array_equal(together[2], alone[0])
    # The third chunk of a document sees only its own bytes: same entropies as a document of that chunk.
    tail = segment.doc_entropies(model, [docs[0][128:]], chunk_bytes=64, tile_positions=512)
    np.testing.assert_array_equal(together[0][128:], tail[0])
    for e, d in zip(together, docs):
        assert e.shape == (len(d),) and (e >= 0).all() and (e <= 8.0 + 1e-4).all()
