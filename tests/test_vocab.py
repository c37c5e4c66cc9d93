"""The shared vocabulary: raw and compressed id maps, sizes, strictness."""

import numpy as np
import pytest

from proxy_jax import vocab


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 65537])
def test_raw_round_trip_random_bytes(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    ids = vocab.encode_raw(data)
    assert ids.dtype == np.int32 and ids.shape == (n,)
    assert n == 0 or (ids.min() >= 64 and ids.max() <= 319)
    assert vocab.decode_raw(ids) == data
    assert np.array_equal(vocab.encode_raw(np.frombuffer(data, np.uint8)), ids)


def test_every_byte_value_has_its_own_id():
    ids = vocab.encode_raw(bytes(range(256)))
    assert ids.tolist() == list(range(64, 320))
    assert bool(np.all(vocab.is_raw_byte(ids))) and not bool(np.any(vocab.is_comp(ids)))


def test_sizes():
    assert vocab.vocab_size(0) == 320  # bytes only
    assert vocab.vocab_size(256) == 576  # gzip, tokens as 2 bytes
    assert vocab.vocab_size(65536) == 65856  # 16-bit neural symbols
    for n in [0, 1, 255, 256, 4096, 65536, 96640]:
        p = vocab.padded_vocab_size(n)
        assert p % 128 == 0 and vocab.vocab_size(n) <= p < vocab.vocab_size(n) + 128
    assert vocab.padded_vocab_size(0) == 384 and vocab.padded_vocab_size(256) == 640
    with pytest.raises(ValueError, match="num_comp_symbols"):
        vocab.vocab_size(-1)


def test_decode_raw_strictness():
    ids = np.array([vocab.BOS, vocab.RAW_OPEN, 64 + ord("h"), 64 + ord("i"), vocab.RAW_CLOSE, 400, vocab.EOS])
    with pytest.raises(ValueError, match="strict=False"):
        vocab.decode_raw(ids)
    assert vocab.decode_raw(ids, strict=False) == b"hi"
    with pytest.raises(ValueError):
        vocab.decode_raw([320])
    with pytest.raises(ValueError):
        vocab.decode_raw([63])
    with pytest.raises(ValueError, match="uint8"):
        vocab.encode_raw(np.arange(3, dtype=np.int32))


def test_comp_round_trip_and_masks():
    sym = np.random.default_rng(0).integers(0, 65536, 500)
    ids = vocab.encode_comp(sym)
    assert ids.dtype == np.int32 and ids.min() >= 320
    assert np.array_equal(vocab.decode_comp(ids), sym)
    with pytest.raises(ValueError, match="not a compressed symbol"):
        vocab.decode_comp([319, 500])
    every = np.arange(0, 1000)
    raw, comp = vocab.is_raw_byte(every), vocab.is_comp(every)
    assert not np.any(raw & comp)
    assert np.array_equal(raw | comp, every >= 64)


def test_describe():
    ids = [vocab.BOS, vocab.COMP_OPEN, 320 + 7, vocab.COMP_CLOSE, vocab.RAW_OPEN, 64 + ord("a"), vocab.RAW_CLOSE,
           5, vocab.EOS]
    assert vocab.describe(ids) == "<bos><comp>[7]</comp><raw>a</raw><special5><eos>"
