"""make_pipeline end to end on the standard library's .py files: determinism, resume, workers, hosts."""

import json
import threading
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import config_with
from proxy_jax import vocab
from proxy_jax.data import corpus
from proxy_jax.data import pipeline
from proxy_jax.proxies.simple import GzipProxy


def _config(**data):
    # Many short documents (600-byte pieces) keep the tests fast.
    return config_with(**{"data.seq_len": 96, "data.batch_size": 4, "data.max_doc_bytes": 600,
                          "mix.warmup_steps": 6, "mix.steady_steps": 4, "mix.decay_steps": 0,
                          "mix.mode_warmup": "parallel_random", "model.num_raw_pred_heads": 1,
                          **{f"data.{k}": v for k, v in data.items()}})


@pytest.fixture(scope="module")
def source():
    return corpus.load_split(_config().data, "train")


class _First:
    """The first ``n`` documents of a source."""

    def __init__(self, source, n):
        self.source, self.n = source, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.source[i]


def _pipe(config, source, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return pipeline.make_pipeline(config, "train", proxy=GzipProxy(), source=source, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{key} of batch {k}")


def test_batch_format(source):
    c = _config()
    b = next(iter(_pipe(c, source)))
    L, K = 96, 2
    for key in ("tokens", "segment_ids", "positions"):
        assert b[key].shape == (4, L + K) and b[key].dtype == np.int32
    for key in ("step", "num_docs", "num_comp_docs", "num_streams", "num_comp_streams"):
        assert b[key].shape == (4,) and b[key].dtype == np.int32
    assert np.all(b["step"] == 0) and b["segment_ids"].min() >= 1
    assert b["tokens"][0, 0] == vocab.BOS and b["positions"][0, 0] == 0


def test_same_seed_same_batches_other_seed_differs(source):
    c = _config()
    a = _take(iter(_pipe(c, source)), 6)
    _assert_same(a, _take(iter(_pipe(c, source)), 6))
    c2 = _config()
    c2.seed = 1
    b = _take(iter(_pipe(c2, source)), 6)
    assert not all(np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))


def test_restore_mid_stream_continues_exactly(source):
    c = _config()
    ref = _take(iter(_pipe(c, source)), 14)
    it = iter(_pipe(c, source))
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    fresh = iter(_pipe(c, source))
    fresh.set_state(state)
    _assert_same(_take(fresh, 9), ref[5:])


def test_start_step_gives_the_same_batch(source):
    c = _config()
    ref = _take(iter(_pipe(c, source)), 8)
    _assert_same(_take(iter(_pipe(c, source, start_step=6)), 2), ref[6:])


def test_grain_checkpoint_round_trip(source, tmp_path):
    c = _config()
    ref = _take(iter(_pipe(c, source)), 8)
    it = iter(_pipe(c, source))
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        fresh = iter(_pipe(c, source))
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_same(_take(fresh, 5), ref[3:])


def test_workers_give_identical_batches_and_resume(source):
    c0 = _config()
    ref = _take(iter(_pipe(c0, source)), 10)
    c2 = _config(num_workers=2, prefetch=1)
    it = iter(_pipe(c2, source))
    first = _take(it, 4)
    _assert_same(first, ref[:4])
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    fresh = iter(_pipe(c2, source))
    fresh.set_state(state)
    _assert_same(_take(fresh, 6), ref[4:])
    fresh.close()
    # A state saved with workers restores without them (and the other way round).
    plain = iter(_pipe(c0, source))
    plain.set_state(json.loads(json.dumps(state)))
    _assert_same(_take(plain, 2), ref[4:6])


def _packing_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("grain-thread-prefetch")}


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_host_prefetch_gives_the_same_batches_and_saves_the_consumed_position(source, depth):
    """The packing thread runs ``depth`` batches ahead, yet the state is the position after the batches
    the caller took: it equals the in-thread pipeline's state and resumes (with any depth) exactly."""
    # Two shards: the joined rows of both are packed in the thread; rows longer than the 600-byte
    # documents, so that packing every batch draws new documents.
    c = _config(virtual_shards=2, seq_len=640)
    drawn_plain = []
    plain = iter(_pipe(c, source, on_document=lambda **d: drawn_plain.append(d)))
    ref, drawn_after = [], []  # documents drawn once batch k was packed
    for _ in range(12):
        ref.append(next(plain))
        drawn_after.append(len(drawn_plain))
    before = _packing_threads()
    drawn = []
    it = iter(_pipe(c, source, host_prefetch=depth, on_document=lambda **d: drawn.append(d)))
    _assert_same(_take(it, 5), ref[:5])
    deadline = time.monotonic() + 60
    while len(drawn) < drawn_after[4 + depth] and time.monotonic() < deadline:
        time.sleep(0.01)  # the thread fills its queue: batches 5 .. 4 + depth are packed, not taken
    assert len(drawn) >= drawn_after[4 + depth] > drawn_after[4]
    state = it.get_state()
    expected = iter(_pipe(c, source))
    _take(expected, 5)
    assert state == expected.get_state()
    assert drawn[: len(drawn_plain)] == drawn_plain[: len(drawn)]  # same documents, same draws, same order
    # The saved position resumes exactly, with the same depth, another one, or none.
    for resumed_depth in (depth, 3, 0):
        fresh = iter(_pipe(c, source, host_prefetch=resumed_depth))
        fresh.set_state(json.loads(json.dumps(state)))
        _assert_same(_take(fresh, 7), ref[5:])
        fresh.close()
    _assert_same(_take(it, 7), ref[5:])  # and the prefetching iterator itself goes on where it was
    assert _packing_threads() - before
    it.close()
    assert not _packing_threads() - before, "close() must stop the packing thread"


class _Failing(_First):
    """A source whose document ``bad`` cannot be read."""

    def __init__(self, source, n, bad):
        super().__init__(source, n)
        self.bad = bad

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"cannot read document {i}")
        return self.source[i]


def test_host_prefetch_raises_a_packing_error_at_the_same_batch(source):
    c = _config(shuffle=False)
    bad = _Failing(source, 400, bad=60)

    def batches_before_error(depth):
        it = iter(_pipe(c, bad, host_prefetch=depth))
        taken = 0
        with pytest.raises(OSError, match="cannot read document 60"):
            while True:
                next(it)
                taken += 1
        it.close()
        return taken

    before = _packing_threads()
    plain = batches_before_error(0)
    assert plain > 0
    assert batches_before_error(2) == plain
    assert not _packing_threads() - before


def test_host_slices_are_disjoint_and_cover_all_documents(source):
    c = _config(batch_size=8, num_epochs=1)
    source = _First(source, 301)
    seen = []
    for host in range(4):
        docs = []
        ds = _pipe(c, source, process_index=host, process_count=4, on_document=lambda **d: docs.append(d))
        batches = list(ds)
        assert all(b["tokens"].shape == (2, 98) for b in batches)
        seen.append([d["index"] for d in docs])
    sets = [set(s) for s in seen]
    for s in seen:
        assert len(s) == len(set(s))  # one epoch: every document once
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sets[i] & sets[j]
    assert set().union(*sets) == set(range(len(source)))


def test_epochs_reshuffle_and_are_numbered(source):
    c = _config()
    small = _First(source, 12)
    docs = []
    it = iter(_pipe(c, small, on_document=lambda **d: docs.append(d)))
    while len(docs) < 3 * len(small):
        next(it)
    epochs = [d["epoch"] for d in docs[: 3 * len(small)]]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1, 2}
    orders = [[d["index"] for d in docs if d["epoch"] == e] for e in range(3)]
    assert all(sorted(o) == list(range(len(small))) for o in orders)
    assert orders[0] != orders[1] or orders[1] != orders[2]


def test_byte_baseline_never_compresses(source):
    c = _config()
    c.proxy.name = "bytes"
    c.mix.rate_init = c.mix.rate_peak = c.mix.rate_final = 0.0
    c.mix.mode_warmup = c.mix.mode_steady = c.mix.mode_final = "vanilla"

    class NoProxy:
        def encode(self, data):
            raise AssertionError("a byte-only run must not compress")

    b = _take(iter(pipeline.make_pipeline(c, proxy=NoProxy(), source=source, process_index=0,
                                          process_count=1)), 3)
    tokens = np.concatenate([x["tokens"] for x in b])
    assert tokens.max() < vocab.COMP_OFFSET
    assert not np.isin(tokens, [vocab.RAW_OPEN, vocab.COMP_OPEN]).any()  # vanilla: no sentinels
    assert sum(int(x["num_comp_streams"].sum()) for x in b) == 0


@pytest.mark.parametrize("field,value,needle", [
    ("batch_size", 6, "batch_size=6 must be divisible by the 4 processes"),  # one device per process
    ("seq_len", 0, "seq_len=0"),
    ("num_workers", -1, "num_workers=-1"),
    ("host_prefetch", -1, "host_prefetch=-1 must be a whole number >= 0"),
    ("source", "s3", "source='s3' is not one of"),
])
def test_config_errors(field, value, needle):
    """Data settings the pipeline cannot honour stop before anything is built, in one sentence."""
    from proxy_jax import assemble

    c = _config()
    c.data.path = "/data"  # a source other than stdlib needs a path; the name is what is wrong here
    c.data[field] = value
    with pytest.raises(ValueError, match=needle):
        assemble.validate(c, num_devices=1, process_count=4)


def test_preprocessed_shards_give_the_same_batches_as_online_compression(tmp_path):
    import os
    import sysconfig

    from proxy_jax import assemble

    c = _config()
    c.data.source, c.data.path, c.data.max_doc_bytes = "dir", os.path.join(sysconfig.get_paths()["stdlib"], "json"), 0
    c.proxy.name = "gzip"
    out = str(tmp_path / "shards")
    assemble.preprocess(c, out, num_shards=2, splits=("train",), progress_bar=False)
    online = pipeline.make_pipeline(c, proxy=GzipProxy(), process_index=0, process_count=1)
    c.data.source, c.data.path = "preprocessed", out
    stored = pipeline.make_pipeline(c, process_index=0, process_count=1)  # no proxy needed: views are stored
    a, b = _take(iter(online), 6), _take(iter(stored), 6)
    _assert_same(a, b)
    assert sum(int(x["num_comp_streams"].sum()) for x in a) > 0
