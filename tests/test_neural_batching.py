"""The neural view does not depend on batching: tiles, buckets, companions, batch size, processes.

M1's float rounding depends on the shape of a call, so the proxy runs M1 only on fixed tiles
(``proxy_jax.proxies.neural.m1``). These tests encode fixed documents alone, with other documents, in
another order, with other batch sizes and in another process, and require identical ids; a pinned
sha256 of their view catches any change of the coding rule or of the tile layout.
"""

import concurrent.futures
import hashlib
import multiprocessing
import pickle

import numpy as np
import pytest

import neural_helpers as nh
from proxy_jax.proxies.neural import NeuralProxy
from proxy_jax.proxies.neural import m1 as m1_lib

# sha256 of the view of ``_fixed_docs()`` under ``_proxy()`` (see ``_digest``), on the CPU backend. It
# changes when the coding rule, the bucket rule or the tile layout changes (then say so and pin the new
# one); a last-ulp difference in M1's float32 logits on another CPU or XLA version can also move it.
PINNED_VIEW_SHA256 = "58b1e937f63307162ea3c826a6fe240a4f2d26c9acf5c5ddb99a681c4863f897"


def _fixed_docs() -> list[bytes]:
    """Documents fixed by this file alone: text, code, invalid UTF-8, every byte, empty, 1 byte, long."""
    rng = np.random.default_rng(1234)
    words = [b"the", b"proxy", b"window", b"def", b"return", b"=", b"(", b")", b"\n", b"    ", b"0", b"42"]
    text = b" ".join(words[i] for i in rng.integers(0, len(words), 120))
    return [
        b"def f(x):\n    return x * 2 + 1\n",
        text,
        b"",
        b"A",
        b"\xff\xfe\x80 not utf-8 \xc3\x28 \xe2\x82",
        bytes(range(256)),
        bytes(rng.integers(0, 256, 90, dtype=np.uint8)),
        "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 ".encode() * 6,
    ]


def _others() -> list[bytes]:
    rng = np.random.default_rng(99)
    return [bytes(rng.integers(32, 127, n, dtype=np.uint8)) for n in (5, 70, 200, 13)]


@pytest.fixture(scope="module")
def m1_args_params():
    args = nh.tiny_args()
    return args, nh.init_params(args)


def _proxy(m1_args_params, **kwargs) -> NeuralProxy:
    args, params = m1_args_params
    settings = dict(context=64, chunk_bytes=64, tile_positions=128, entropy_threshold=6.2)
    settings.update(kwargs)
    return NeuralProxy.from_params(args, params, **settings)


def _view(codes) -> list[tuple[list[int], list[int], list[int]]]:
    return [(c.ids.tolist(), c.nbytes.tolist(), c.segment_ids.tolist()) for c in codes]


def _digest(codes) -> str:
    h = hashlib.sha256()
    for c in codes:
        for a in (c.ids, c.nbytes, c.segment_ids):
            h.update(np.asarray(a, "<i4").tobytes())
            h.update(b"|")
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference_codes(m1_args_params):
    return _proxy(m1_args_params).encode_detailed(_fixed_docs())


def test_buckets_pad_under_one_and_a_half_and_tiles_cover_every_row_once():
    lengths = list(range(1, 300))
    buckets = [m1_lib.bucket_length(n, 256) for n in lengths]
    assert all(b >= n for b, n in zip(buckets, lengths)) and buckets == sorted(buckets)
    assert all(b < 1.5 * n for b, n in zip(buckets, lengths) if 8 < n <= 256)
    assert set(buckets[:256]) == {8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256}
    assert buckets[-1] == 299  # longer than max_len: its own length (the proxy refuses such segments)
    rng = np.random.default_rng(0)
    rows = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in rng.integers(0, 65, 300)]
    seen = []
    for idx, length, tokens, data, lens in m1_lib.tiled_batches(rows, 128, 64, tiles_per_call=4):
        n = tokens.shape[0]
        assert n in (1, 2, 4) and tokens.shape == data.shape == (n, m1_lib.tile_rows(length, 128), length)
        assert len(idx) > (n - 1) * tokens.shape[1]  # no call carries an empty tile
        flat = data.reshape(-1, length)
        for j, i in enumerate(idx):
            assert m1_lib.bucket_length(len(rows[i]), 64) == length and lens.reshape(-1)[j] == len(rows[i])
            assert flat[j, : len(rows[i])].astype(np.uint8).tobytes() == rows[i]
        assert (lens.reshape(-1)[len(idx) :] == 0).all()
        seen += idx
    assert sorted(seen) == list(range(len(rows)))


def test_ids_do_not_depend_on_companions_order_or_batch_size(m1_args_params, reference_codes):
    docs, others = _fixed_docs(), _others()
    ref = _view(reference_codes)
    proxy = _proxy(m1_args_params)
    for i, doc in enumerate(docs):  # alone
        assert _view(proxy.encode_detailed([doc])) == [ref[i]], i
    mixed = others[:2] + docs[::-1] + others[2:]  # with other documents, in another order
    got = _view(proxy.encode_detailed(mixed))
    assert got[2 : 2 + len(docs)][::-1] == ref
    for batch_rows in (1, 3, 64):  # 1, 1 and 32 tiles per call: lax.map over several tiles or one
        other = _proxy(m1_args_params, batch_rows=batch_rows)
        assert _view(other.encode_detailed(docs)) == ref, batch_rows
    assert [c.ids.tolist() for c in reference_codes] == [i.tolist() for i in proxy.encode_batch(docs)]


def _encode_in_child(blob: bytes, docs: list[bytes]) -> bytes:
    proxy = pickle.loads(blob)
    return pickle.dumps(_view(proxy.encode_detailed(docs)))


def test_ids_do_not_depend_on_the_process(m1_args_params, reference_codes):
    """Half of the documents coded by a fresh process (as ``preprocess --process_count=2`` does)."""
    docs = _fixed_docs()
    blob = pickle.dumps(_proxy(m1_args_params))
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        child = pickle.loads(pool.submit(_encode_in_child, blob, docs[1::2]).result(timeout=600))
    assert child == _view(reference_codes)[1::2]


def test_view_of_fixed_documents_is_pinned(reference_codes):
    assert _digest(reference_codes) == PINNED_VIEW_SHA256


def test_round_trip_over_varied_documents(m1_args_params, reference_codes):
    docs = _fixed_docs()
    proxy = _proxy(m1_args_params)
    assert proxy.decode_codes(reference_codes) == docs
    for doc, code in zip(docs, reference_codes):
        assert int(code.nbytes.sum()) == len(doc) and all(0 < n <= 64 for n in code.segment_bytes)
    long_doc = b"".join(docs)  # several 64-byte chunks, segments of every bucket
    code = proxy.encode_detailed([long_doc])[0]
    assert proxy.decode(code) == long_doc


def test_manifest_records_the_tile_and_refuses_the_earlier_layout(m1_args_params):
    from proxy_jax.proxies import Inputs

    args, params = m1_args_params
    proxy = _proxy(m1_args_params)
    m = proxy.manifest()
    assert m["m1_tile_positions"] == 128 and m["m1_bucket_rule"] == m1_lib.BUCKET_RULE
    model = m1_lib.M1.from_params(args, params, context=64)
    again = NeuralProxy.from_manifest(m, Inputs(load_m1=lambda where: model))
    docs = _fixed_docs()[:3]
    assert _view(again.encode_detailed(docs)) == _view(proxy.encode_detailed(docs))
    old = {k: v for k, v in m.items() if k not in ("m1_tile_positions", "m1_bucket_rule")}
    with pytest.raises(ValueError, match="preprocess again"):
        NeuralProxy.from_manifest(old, Inputs(load_m1=lambda where: model))
    with pytest.raises(ValueError, match="m1_tile_positions=4"):
        _proxy(m1_args_params, tile_positions=4)
