"""Corpora in object storage (``data.path=gs://...``), against the local Cloud Storage server of
``tests/gcs_emulator.py``: a Parquet folder, JSONL files, ArrayRecord files and preprocessed shards read from
the bucket give the same documents, keys and batches as the same files on local disk (full and lazy index);
a tiny run trains from the bucket. Also (local): a ``datasets`` DatasetDict trains on its ``train`` split and
holds out its ``validation`` split; a ``data.text_field`` the user named must exist."""

import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import TINY, config_with, stdlib_docs
from proxy_jax.data import corpus, pipeline, remote

DOCS = [d.decode() for d in stdlib_docs(48, 2500)]


def _write_corpus(root):
    """The same 48 documents (and a null and an empty row) as a Parquet folder of three files with row groups of
    five rows, one in a subfolder, and as two JSONL files."""
    rows = DOCS[:9] + [None, ""] + DOCS[9:]
    parts = {"a.parquet": rows[:17], "b.parquet": rows[17:33], "sub/c.parquet": rows[33:]}
    for name, part in parts.items():
        os.makedirs(os.path.dirname(root / "pq" / name), exist_ok=True)
        pq.write_table(pa.table({"n": list(range(len(part))), "content": part}), root / "pq" / name, row_group_size=5)
    os.makedirs(root / "js")
    for name, part in (("x.jsonl", DOCS[:20]), ("y.jsonl", DOCS[20:])):
        with open(root / "js" / name, "w") as f:
            for d in part:
                f.write(json.dumps({"text": d, "id": 1}) + "\n")
            f.write("\n")  # a blank line, skipped and counted


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """The corpus on local disk and under gs://runs/corpus/ of the emulator; downloads go to a fresh cache."""
    pytest.importorskip("gcsfs", reason="the [gcs] extra is not installed")
    pytest.importorskip("gcp_storage_emulator", reason="the test extra is not installed")
    import gcs_emulator

    local = tmp_path_factory.mktemp("local")
    _write_corpus(local)
    cache = tmp_path_factory.mktemp("cache")
    old_cache = os.environ.get(remote.CACHE_ENV)
    os.environ[remote.CACHE_ENV] = str(cache)
    with gcs_emulator.running(tmp_path_factory.mktemp("gcs")) as served:
        fs = served["fs"]
        for kind in ("pq", "js"):
            for path in sorted((local / kind).rglob("*")):
                if path.is_file():
                    fs.pipe(f"runs/corpus/{kind}/{path.relative_to(local / kind).as_posix()}", path.read_bytes())
        yield {**served, "local": local, "cache": cache}
    if old_cache is None:
        os.environ.pop(remote.CACHE_ENV, None)
    else:
        os.environ[remote.CACHE_ENV] = old_cache


def _config(source, path, **kw):
    return config_with(**{"data.source": source, "data.path": str(path), "data.val_fraction": 0.25,
                          "data.seq_len": 96, "data.batch_size": 4, "data.max_doc_bytes": 0, "proxy.name": "bytes",
                          "mix.rate_init": 0.0, "mix.rate_peak": 0.0, "mix.rate_final": 0.0, **kw})


def _same_split(local, url, split):
    """Both sources of a split hold the same keys, sizes and (read in a shuffled order) documents."""
    assert local.fingerprint() == url.fingerprint() and len(local) == len(url) > 0
    assert [local.key(i) for i in range(len(local))] == [url.key(i) for i in range(len(url))]
    order = np.random.default_rng(split == "train").permutation(len(local)).tolist()
    assert [url[i] for i in order] == [local[i] for i in order]


def _same_batches(local_config, url_config, steps=4):
    a = iter(pipeline.make_pipeline(local_config, process_index=0, process_count=1))
    b = iter(pipeline.make_pipeline(url_config, process_index=0, process_count=1))
    for _ in range(steps):
        x, y = next(a), next(b)
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("index", ["full", "lazy"])
@pytest.mark.parametrize("source,folder,spec", [("parquet", "pq", ""), ("parquet", "pq", "*/*.parquet"),
                                                ("jsonl", "js", ""), ("jsonl", "js", "y.jsonl")])
def test_a_corpus_in_the_bucket_reads_as_on_local_disk(bucket, source, folder, spec, index):
    local, url = str(bucket["local"] / folder / spec) if spec else str(bucket["local"] / folder), \
        f"gs://runs/corpus/{folder}/{spec}".rstrip("/")
    configs = [_config(source, path, **{"data.index": index}) for path in (local, url)]
    for split in ("train", "validation"):
        on_disk, in_bucket = (corpus.load_split(c.data, split) for c in configs)
        assert in_bucket.lazy == (index == "lazy") and in_bucket.files[0].startswith("gs://runs/corpus/")
        _same_split(on_disk, in_bucket, split)
        assert {k: v for k, v in in_bucket.stats.items()} == on_disk.stats
    _same_batches(*configs)


def test_parquet_in_the_bucket_in_grain_worker_processes(bucket):
    """The source pickled into two worker processes reads the bucket there (fresh file systems, footers)."""
    url = _config("parquet", "gs://runs/corpus/pq", **{"data.index": "lazy"})
    local = _config("parquet", bucket["local"] / "pq", **{"data.index": "lazy"})
    url.data.num_workers = 2
    _same_batches(local, url, steps=3)


def test_arrayrecord_and_preprocessed_shards_are_read_from_local_copies(bucket, tmp_path):
    from array_record.python import array_record_module

    from proxy_jax import assemble

    fs = bucket["fs"]
    path = tmp_path / "docs.array_record"
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    for d in DOCS:
        writer.write(d.encode())
    writer.close()
    fs.pipe("runs/corpus/ar/docs.array_record", path.read_bytes())
    local, url = (_config("arrayrecord", p) for p in (path, "gs://runs/corpus/ar/docs.array_record"))
    for split in ("train", "validation"):
        _same_split(corpus.load_split(local.data, split), corpus.load_split(url.data, split), split)
    copies = [p for p in bucket["cache"].rglob("*.array_record")]
    assert len(copies) == 1 and copies[0].read_bytes() == path.read_bytes()  # downloaded once

    c = _config("parquet", bucket["local"] / "pq", **{"proxy.name": "gzip"})
    assemble.preprocess(c, str(tmp_path / "shards"), num_shards=2, splits=("train", "validation"), progress_bar=False)
    fs.put(str(tmp_path / "shards"), "runs/corpus/shards", recursive=True)
    on_disk, in_bucket = (_config("preprocessed", p, **{"proxy.name": "gzip"})
                          for p in (tmp_path / "shards", "gs://runs/corpus/shards"))
    _same_batches(on_disk, in_bucket, steps=3)
    assert assemble.make_proxy(in_bucket, workdir=str(tmp_path / "w")).name == "gzip"  # a run's proxy from there


def test_a_tiny_run_trains_from_the_bucket_and_evaluate_reads_it(bucket, tmp_path):
    from proxy_jax import train
    from proxy_jax.evaluation import score

    config = config_with("configs/bytes.py:tiny", **{**TINY, "train.steps": 3, "data.source": "parquet",
                                                      "data.path": "gs://runs/corpus/pq", "data.val_fraction": 0.2,
                                                      "data.batch_size": 4, "data.max_doc_bytes": 2048})
    train.train(config, str(tmp_path / "run"), progress=False)
    losses = [json.loads(line)["train/loss"] for line in open(tmp_path / "run" / "metrics.jsonl")
              if "train/loss" in line]
    assert len(losses) == 3 and all(np.isfinite(losses))
    # evaluate --data reads a bucket folder or file as it reads the local one
    for folder, name in (("pq", ""), ("js", "y.jsonl")):
        local = str(bucket["local"] / folder / name).rstrip("/")
        url = f"gs://runs/corpus/{folder}/{name}".rstrip("/")
        on_disk, in_bucket = (score.evaluate_workdir(str(tmp_path / "run"), data=d, max_docs=3) for d in (local, url))
        assert in_bucket["raw_bpb"] == on_disk["raw_bpb"] and in_bucket["data"] == url


def test_an_unreadable_bucket_path_is_one_sentence(bucket):
    with pytest.raises(ValueError, match="matches no Parquet file") as e:
        corpus.load_split(_config("parquet", "gs://runs/corpus/nothing-here").data, "train")
    assert str(e.value).count(". ") == 0
    with pytest.raises(ValueError, match="cannot open nosuch:// URLs") as e:
        corpus.load_split(_config("jsonl", "nosuch://b/x.jsonl").data, "train")
    assert str(e.value).count(". ") == 0 and "config.data.path=nosuch://b/x.jsonl" in str(e.value)


def _dataset_dict(root, splits):
    datasets = pytest.importorskip("datasets")
    return datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": docs}) for name, docs in splits.items()}
                                ).save_to_disk(str(root))


def test_a_dataset_dict_trains_on_train_and_holds_out_validation(tmp_path, caplog):
    _dataset_dict(tmp_path / "dd", {"train": DOCS[:30], "validation": DOCS[30:40], "test": DOCS[40:]})
    c = _config("hf_disk", tmp_path / "dd", **{"data.val_fraction": 0.5})
    with caplog.at_level(logging.INFO):
        train, val = corpus.load_split(c.data, "train"), corpus.load_split(c.data, "validation")
    assert [train[i].decode() for i in range(len(train))] == DOCS[:30]  # every train row, none held out by hash
    assert [val[i].decode() for i in range(len(val))] == DOCS[30:40]  # validation, not test
    assert train.key(0).startswith("train/") and val.key(0).startswith("validation/")
    said = [r.getMessage() for r in caplog.records if "DatasetDict" in r.getMessage()]
    assert len(said) == 1 and "'validation' split" in said[0], said  # one line for both loads
    _same_batches(c, c, steps=2)  # the pipeline runs on it

    _dataset_dict(tmp_path / "tt", {"train": DOCS[:30], "test": DOCS[30:]})  # no validation: its test split
    val = corpus.load_split(_config("hf_disk", tmp_path / "tt").data, "validation")
    assert [val[i].decode() for i in range(len(val))] == DOCS[30:]

    _dataset_dict(tmp_path / "t", {"train": DOCS})  # train only: held out by hash, as for one Dataset
    c = _config("hf_disk", tmp_path / "t", **{"data.val_fraction": 0.3})
    train, val = corpus.load_split(c.data, "train"), corpus.load_split(c.data, "validation")
    assert len(train) + len(val) == len(DOCS) and len(val) > 0
    assert {train.key(i) for i in range(len(train))}.isdisjoint({val.key(i) for i in range(len(val))})


@pytest.mark.parametrize("index", ["full", "lazy"])
def test_a_named_text_field_must_exist(tmp_path, index):
    pq.write_table(pa.table({"title": ["a", "b"], "content": ["x", "y"]}), tmp_path / "c.parquet")
    (tmp_path / "c.jsonl").write_text(json.dumps({"title": "a", "content": "x"}) + "\n")
    for source, name in (("parquet", "c.parquet"), ("jsonl", "c.jsonl")):
        config = _config(source, tmp_path / name, **{"data.text_field": "body", "data.index": index})
        with pytest.raises(ValueError) as e:
            corpus.load_split(config.data, "train")
        message = str(e.value)
        assert str(tmp_path / name) in message and "'body'" in message and "'content'" in message, message
        assert "'title'" in message and message.count(". ") == 0 and message.endswith("."), message
        # the default "text" still falls back to "content"
        default = corpus.load_split(_config(source, tmp_path / name, **{"data.val_fraction": 0.0}).data, "train")
        assert default[0] == b"x"


def test_a_dataset_dict_in_the_bucket(bucket, tmp_path):
    _dataset_dict(tmp_path / "dd", {"train": DOCS[:30], "validation": DOCS[30:]})
    bucket["fs"].put(str(tmp_path / "dd"), "runs/corpus/dd", recursive=True)
    local, url = (_config("hf_disk", p) for p in (tmp_path / "dd", "gs://runs/corpus/dd"))
    for split in ("train", "validation"):
        _same_split(corpus.load_split(local.data, split), corpus.load_split(url.data, split), split)
