"""NeuralProxy end to end: M1 -> segmentation -> quantisation -> coder -> decoder, on stdlib files."""

import pickle

import numpy as np
import pytest

import neural_helpers as nh
from proxy_jax import vocab
from proxy_jax.proxies.neural import NeuralProxy, reference, segment
from proxy_jax.proxies.neural import m1 as m1_lib


@pytest.fixture(scope="module")
def random_m1():
    args = nh.tiny_args()
    return args, nh.init_params(args)


def _docs(start, count, size):
    return [open(f, "rb").read()[:size] for f in nh.stdlib_files()[start : start + count]]


def test_round_trip_batching_and_manifest(random_m1):
    args, params = random_m1
    proxy = NeuralProxy.from_params(args, params, context=64, chunk_bytes=64, batch_rows=8)
    with pytest.raises(ValueError, match="no entropy threshold"):
        proxy.encode(b"x = 1\n")
    thr = proxy.fit_threshold(_docs(0, 4, 300))
    docs = _docs(10, 4, 240) + [b"", b"\n", bytes(range(256))]
    codes = proxy.encode_detailed(docs)
    assert proxy.decode_codes(codes) == docs
    assert proxy.decode(codes[0]) == docs[0]
    for doc, code in zip(docs, codes):
        ids = code.ids
        assert ids.dtype == np.int32 and len(ids) == len(code.nbytes) <= max(len(doc), 0)
        assert ((ids >= vocab.BYTE_OFFSET) & (ids < vocab.COMP_OFFSET + (1 << 16))).all()
        assert int(code.nbytes.sum()) == len(doc) and sum(code.segment_bytes) == len(doc)
        assert all(0 < n <= 64 for n in code.segment_bytes)
    # A document's view does not depend on what it is batched with.
    assert np.array_equal(proxy.encode(docs[1]), codes[1].ids)
    assert [c.ids.tolist() for c in codes] == [i.tolist() for i in proxy.encode_batch(docs)]
    clone = pickle.loads(pickle.dumps(proxy))
    assert np.array_equal(clone.encode(docs[0]), codes[0].ids)
    with pytest.raises(ValueError, match="not self-delimiting"):
        proxy.decode(codes[0].ids)
    m = proxy.manifest()
    assert m["entropy_threshold"] == thr and m["window_bits"] == 16 and m["quantize_bits"] == 16
    assert m["m1_params_sha256"] == NeuralProxy.from_params(args, params).manifest()["m1_params_sha256"]
    other = NeuralProxy.from_params(args, nh.init_params(args, seed=1)).manifest()["m1_params_sha256"]
    assert other != m["m1_params_sha256"]


def test_small_windows_pass_bytes_through_and_still_round_trip(random_m1):
    args, params = random_m1
    proxy = NeuralProxy.from_params(args, params, context=64, chunk_bytes=64, batch_rows=8, window_bits=8,
                                    entropy_threshold=7.0, min_segment_bytes=8)
    assert proxy.num_symbols == 256
    docs = _docs(20, 3, 200)
    codes = proxy.encode_detailed(docs)
    ids = np.concatenate([c.ids for c in codes])
    assert (ids < vocab.COMP_OFFSET).sum() > 0  # random M1 gives some bytes less than 2**-8
    assert (ids < vocab.COMP_OFFSET + 256).all()
    assert proxy.decode_codes(codes) == docs


def test_from_config_names_a_missing_m1_workdir(tmp_path):
    from proxy_jax import config as config_lib

    from proxy_jax import assemble

    c = config_lib.base_config()
    c.proxy.name = "neural"
    c.proxy.m1_workdir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="m1_workdir=.*configs/m1.py"):
        assemble.make_proxy(c, str(tmp_path))


@pytest.mark.slow
def test_trained_m1_round_trip_and_code_length_within_2_percent_of_ideal_plus_padding():
    """Held-out stdlib files coded with a briefly trained M1.

    Prediction ("ideal plus padding"): for every segment, the windows that the same window rule emits
    with exact arithmetic on the same quantised probabilities (``reference.exact_window_count``), W bits each.
    Tolerance: our window count is within 2% of it.
    """
    files = nh.stdlib_files()
    args = nh.tiny_args(d_model=64, num_layers=2)
    params, train_bits = nh.train_params(args, files[:40], steps=200)
    assert train_bits < 4.5
    proxy = NeuralProxy.from_params(args, params, context=64, chunk_bytes=64, batch_rows=16, min_segment_bytes=8)
    proxy.fit_threshold(_docs(40, 8, 1000))
    docs = _docs(200, 6, 1500)
    codes = proxy.encode_detailed(docs)
    assert proxy.decode_codes(codes) == docs
    ours = exact = 0
    for doc, code in zip(docs, codes):
        ours += int((code.ids >= vocab.COMP_OFFSET).sum())
        for seg in segment.split(doc, np.cumsum([0] + code.segment_bytes[:-1]).tolist()):
            tokens = m1_lib.rows_to_tokens([seg], m1_lib.bucket_length(len(seg), 64))
            freq, _ = m1_lib.tables(proxy.model.args, proxy.model.params, tokens, precision=16)
            data = np.frombuffer(seg, np.uint8)
            exact += reference.exact_window_count(data, np.asarray(freq)[0, : len(seg)], 16)[0]
    assert abs(ours - exact) <= 0.02 * exact, (ours, exact)
