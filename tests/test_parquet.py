"""Parquet and ``datasets`` (Arrow stream) sources: the same documents as written, bad input in one sentence."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import config_with, stdlib_docs
from proxy_jax.data import corpus
from proxy_jax.data import pipeline

DOCS = stdlib_docs(40, 3000)


def _rows():
    """The documents, with a null row and an empty one in between (both skipped and counted)."""
    return DOCS[:7] + [None, ""] + DOCS[7:]


def _write_parquet_folder(folder, column="text", binary=False, row_group_size=5):
    os.makedirs(folder / "sub", exist_ok=True)
    rows = [r if r is None or binary else (r if isinstance(r, str) else r.decode()) for r in _rows()]
    kind = pa.binary() if binary else pa.string()
    half = len(rows) // 2
    for name, part in (("a.parquet", rows[:half]), ("sub/b.parquet", rows[half:])):
        table = pa.table({"id": pa.array(range(len(part))), column: pa.array(part, kind)})
        pq.write_table(table, folder / name, row_group_size=row_group_size)


def _config(source, path, **kw):
    return config_with(**{"data.source": source, "data.path": str(path), "data.val_fraction": 0.0, **kw})


def _documents(source, path, **kw):
    src = corpus.load_split(_config(source, path, **kw).data, "train")
    order = np.random.default_rng(0).permutation(len(src))  # random access across files and row groups
    got = {int(i): src[int(i)] for i in order}
    return [got[i] for i in range(len(src))], src.stats


@pytest.mark.parametrize("column,binary", [("text", False), ("content", False), ("text", True)])
def test_parquet_folder_reads_every_row_in_order(tmp_path, column, binary):
    _write_parquet_folder(tmp_path, column=column, binary=binary)
    docs, stats = _documents("parquet", tmp_path)
    assert docs == DOCS
    assert stats["skipped_null"] == 1 and stats["skipped_empty"] == 1
    assert corpus.skip_report("x", stats) == "Skipped 1 empty documents, 1 null rows in x."


def test_parquet_split_glob_and_text_field(tmp_path):
    _write_parquet_folder(tmp_path, column="body")
    train = corpus.load_split(_config("parquet", tmp_path / "**/*.parquet", **{"data.val_fraction": 0.3,
                                                                              "data.text_field": "body"}).data, "train")
    val = corpus.load_split(_config("parquet", tmp_path, **{"data.val_fraction": 0.3,
                                                             "data.text_field": "body"}).data, "validation")
    assert len(train) and len(val)
    assert sorted(list(train) + list(val)) == sorted(DOCS)
    assert train.key(0).startswith("a.parquet:")


@pytest.mark.parametrize("index", ["full", "lazy"])
def test_many_reader_threads_read_the_same_documents(tmp_path, monkeypatch, index):
    """Grain reads a source from several threads: a shared ParquetFile read by two at once corrupts the heap
    (this test aborted the process when the threads shared one). One open file per thread: every switch
    between the two files closes one and opens the other."""
    import concurrent.futures
    import pickle

    from proxy_jax.data import parquet

    monkeypatch.setattr(parquet, "_OPEN_FILES", 1)

    rng = np.random.default_rng(0)
    for f in range(2):
        rows = [bytes(rng.integers(97, 123, int(n), dtype=np.uint8)).decode() for n in rng.integers(1, 3000, 1500)]
        pq.write_table(pa.table({"text": rows}), tmp_path / f"f{f}.parquet", row_group_size=7)
    src = corpus.load_split(_config("parquet", tmp_path, **{"data.index": index}).data, "train")
    want = [src[i] for i in range(len(src))]
    order = rng.permutation(len(src)).tolist()
    for _ in range(2):
        fresh = pickle.loads(pickle.dumps(src))  # as a Grain worker gets it: nothing open yet
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(fresh.__getitem__, order))
        assert got == [want[i] for i in order]


def test_hf_disk_arrow_stream_files(tmp_path):
    rows = [r if r is None else (r if isinstance(r, str) else r.decode()) for r in _rows()]
    for k, part in enumerate((rows[:20], rows[20:])):  # save_to_disk's layout: data-0000k-of-0000n.arrow
        table = pa.table({"text": pa.array(part, pa.string())})
        with pa.OSFile(str(tmp_path / f"data-{k:05d}-of-00002.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=6)
    (tmp_path / "state.json").write_text(json.dumps({"_data_files": []}))
    docs, stats = _documents("hf_disk", tmp_path)
    assert docs == DOCS and stats["skipped_null"] == 1


def test_parquet_pipeline_resumes_exactly(tmp_path):
    _write_parquet_folder(tmp_path)
    c = _config("parquet", tmp_path, **{"data.seq_len": 128, "data.batch_size": 4, "proxy.name": "bytes",
                                         "mix.rate_init": 0.0, "mix.rate_peak": 0.0, "mix.rate_final": 0.0})
    source = corpus.load_split(c.data, "train")
    make = lambda: iter(pipeline.make_pipeline(c, source=source, process_index=0, process_count=1))  # noqa: E731
    it = make()
    ref = [next(it) for _ in range(12)]
    it = make()
    for _ in range(5):
        next(it)
    fresh = make()
    fresh.set_state(json.loads(json.dumps(it.get_state())))
    for k in range(5, 12):
        np.testing.assert_array_equal(next(fresh)["tokens"], ref[k]["tokens"])
    c.data.num_workers = 2  # the source pickled into Grain's worker processes (its lock and open files rebuilt)
    workers = iter(pipeline.make_pipeline(c, source=source, process_index=0, process_count=1))
    for k in range(12):
        np.testing.assert_array_equal(next(workers)["tokens"], ref[k]["tokens"])


def _refused(source, path, needle, **kw):
    with pytest.raises(ValueError, match=needle) as e:
        corpus.load_split(_config(source, path, **kw).data, "train")
    message = str(e.value)
    assert message.count(". ") == 0 and message.endswith("."), message  # one sentence
    return message


def test_bad_parquet_is_refused_in_one_sentence(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    msg = _refused("parquet", tmp_path / "nocol.parquet", "has none of the columns")
    assert str(tmp_path / "nocol.parquet") in msg and "text_field" in msg
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    assert str(tmp_path / "ints.parquet") in _refused("parquet", tmp_path / "ints.parquet", "is int64, not text")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    assert str(tmp_path / "bad.parquet") in _refused("parquet", tmp_path / "bad.parquet", "not a readable Parquet")
    _refused("parquet", tmp_path / "none" / "*.parquet", "matches no Parquet file")
    _refused("hf_disk", tmp_path / "missing", "is not a folder")
    (tmp_path / "dd" / "validation").mkdir(parents=True)
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["validation"]}')
    _refused("hf_disk", tmp_path / "dd", r"DatasetDict with the splits \['validation'\] and no 'train'")


def test_arrayrecord_source_refuses_a_jsonl_file(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "hello"}\n')
    assert str(path) in _refused("arrayrecord", path, "is not an ArrayRecord file")


def test_tiny_run_trains_and_evaluates_on_a_parquet_folder(tmp_path):
    from proxy_jax import train
    from proxy_jax.evaluation import score

    _write_parquet_folder(tmp_path / "corpus")
    config = config_with("configs/bytes.py:tiny", **{
        "data.source": "parquet", "data.path": str(tmp_path / "corpus"), "data.val_fraction": 0.2,
        "data.seq_len": 64, "data.batch_size": 4, "train.steps": 3, "train.log_every": 1, "train.eval_every": 0,
        "train.tensorboard": False, "train.sample_prompt": "", "model.num_layers": 1, "model.d_model": 32,
        "model.num_heads": 2, "model.num_kv_heads": 2, "model.head_dim": 16, "model.d_ff": 64})
    summary = train.train(config, str(tmp_path / "run"), progress=False)
    losses = [json.loads(line)["train/loss"] for line in open(tmp_path / "run" / "metrics.jsonl")
              if "train/loss" in line]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert summary is not None
    docs = score.documents_config(config, str(tmp_path / "corpus"))
    assert docs.data.source == "parquet"
    assert corpus.load_split(docs.data, "train").stats["source_documents"] == len(DOCS)  # evaluation reads them all


def test_preprocess_takes_parquet_and_gives_the_same_batches(tmp_path):
    from proxy_jax import assemble
    from proxy_jax.proxies.simple import GzipProxy

    _write_parquet_folder(tmp_path / "corpus")
    c = _config("parquet", tmp_path / "corpus", **{"data.seq_len": 96, "data.batch_size": 4, "proxy.name": "gzip"})
    assemble.preprocess(c, str(tmp_path / "shards"), num_shards=2, splits=("train",), progress_bar=False)
    online = pipeline.make_pipeline(c, proxy=GzipProxy(), process_index=0, process_count=1)
    c.data.source, c.data.path = "preprocessed", str(tmp_path / "shards")
    stored = pipeline.make_pipeline(c, process_index=0, process_count=1)
    online, stored = iter(online), iter(stored)
    for a, b in [(next(online), next(stored)) for _ in range(3)]:
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_training_command_refuses_bad_parquet_in_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-m", "proxy_jax.main", "--config=configs/bytes.py:tiny",
                          f"--workdir={tmp_path / 'run'}", "--config.data.source=parquet",
                          f"--config.data.path={tmp_path / 'bad.parquet'}"],
                         cwd=os.path.dirname(os.path.dirname(__file__)), env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert f"error: {tmp_path / 'bad.parquet'} is not a readable Parquet file" in out.stderr
