"""The reference's ``m1_ac_ow16`` JSONL format: test vector both ways, round trips, odd-length runs."""

import base64
import json

import numpy as np
import pytest

from proxy_jax import vocab
from proxy_jax.proxies.neural import interop

VALUES = [104, 256 + 0xAB, 256 + 0xCD, 256 + 0x01, 256 + 0x02, 105]
PACKED = bytes.fromhex("68 56 37 0f 28 30 0d")
B64 = "aFY3DygwDQ=="
IDS = [64 + 104, 320 + 0xABCD, 320 + 0x0102, 64 + 105]


def test_vector_both_ways():
    assert interop.pack9(VALUES) == PACKED
    assert base64.b64encode(PACKED).decode() == B64
    assert interop.unpack9(PACKED).tolist() == VALUES
    ids, dropped = interop.decode_field(B64)
    assert ids.tolist() == IDS and dropped == 0
    assert interop.encode_field(IDS) == B64


def test_random_round_trips():
    rng = np.random.default_rng(0)
    for n in range(0, 40):
        values = rng.integers(0, 512, size=n)
        assert interop.unpack9(interop.pack9(values)).tolist() == values.tolist()
        ids = np.where(
            rng.random(n) < 0.5,
            rng.integers(vocab.BYTE_OFFSET, vocab.COMP_OFFSET, n),
            rng.integers(vocab.COMP_OFFSET, vocab.COMP_OFFSET + 65536, n),
        )
        back, dropped = interop.decode_field(interop.encode_field(ids))
        assert back.tolist() == ids.tolist() and dropped == 0


def test_odd_runs_stop_with_file_and_line_or_are_counted(tmp_path):
    odd = base64.b64encode(interop.pack9([104, 256 + 1, 256 + 2, 256 + 3, 105])).decode()
    path = tmp_path / "docs.jsonl"
    path.write_text(
        json.dumps({"m1_ac_ow16": B64}) + "\n" + json.dumps({"m1_ac_ow16": odd}) + "\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match=rf"{path}:2: a compressed run of 3 bytes"):
        list(interop.read_jsonl(str(path)))
    stats = interop.ReadStats()
    docs = list(interop.read_jsonl(str(path), odd="drop", stats=stats))
    assert docs[0].tolist() == IDS
    assert docs[1].tolist() == [64 + 104, 320 + 0x0102, 64 + 105]
    assert (stats.documents, stats.dropped_odd_bytes, stats.documents_with_dropped) == (2, 1, 1)


def test_write_then_read_jsonl(tmp_path):
    path = str(tmp_path / "out.jsonl")
    docs = [np.asarray(IDS), np.asarray([], np.int64), np.asarray([320, 65855, 64, 319])]
    interop.write_jsonl(path, docs, extra=[{"id": i} for i in range(3)])
    back = list(interop.read_jsonl(path))
    assert [d.tolist() for d in back] == [d.tolist() for d in docs]
    with pytest.raises(ValueError, match="Id 5 is neither"):
        interop.encode_field([5])
    with pytest.raises(ValueError, match="missing"):
        list(interop.read_jsonl(path, field="other"))
