"""Corpus sources on the standard library's .py files: splits, empties, cutting, every source kind."""

import json
import math
import os
import pickle
import sysconfig

import numpy as np
import pytest

from proxy_jax.config import base_config
from helpers import config_with
from proxy_jax.data import corpus


def _data(**kw):
    return config_with(**{f"data.{k}": v for k, v in kw.items()}).data


@pytest.fixture(scope="module")
def stdlib_splits():
    d = _data()
    return corpus.load_split(d, "train"), corpus.load_split(d, "validation")


def _stdlib_truth():
    """Sizes of every stdlib .py file, found independently of the library (pathlib instead of os.walk)."""
    import pathlib
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out = {}
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if {"site-packages", "dist-packages", "__pycache__"} & set(rel.parts) or not p.is_file():
            continue
        out[rel.as_posix()] = p.stat().st_size
    return out


def test_stdlib_splits_disjoint_complete_and_held_out_by_hash(stdlib_splits):
    train, val = stdlib_splits
    truth = _stdlib_truth()
    nonempty = {k for k, n in truth.items() if n > 0}
    tk = [train.key(i) for i in range(len(train))]
    vk = [val.key(i) for i in range(len(val))]
    assert tk == sorted(tk) and vk == sorted(vk)
    assert not set(tk) & set(vk)
    assert set(tk) | set(vk) == nonempty
    assert all(corpus.is_held_out(k, 0.05) for k in vk) and not any(corpus.is_held_out(k, 0.05) for k in tk)
    assert train.stats["skipped_empty"] == val.stats["skipped_empty"] == len(truth) - len(nonempty) > 0
    n = len(nonempty)
    frac, se = len(vk) / n, math.sqrt(0.05 * 0.95 / n)
    assert abs(frac - 0.05) < 3 * se, frac
    assert train.stats["documents"] == len(train) and train.stats["bytes"] == sum(truth[k] for k in tk)
    for i in range(0, len(train), 150):
        path = os.path.join(sysconfig.get_paths()["stdlib"], train.key(i))
        assert train[i] == open(path, "rb").read() and train.size(i) == len(train[i])
    assert val[-1] == val[len(val) - 1]
    with pytest.raises(IndexError):
        train[len(train)]


def test_hash_split_fraction_statistics():
    keys = [f"repo/file_{i}.py" for i in range(100_000)]
    for frac in (0.01, 0.05, 0.3):
        held = sum(corpus.is_held_out(k, frac) for k in keys)
        se = math.sqrt(frac * (1 - frac) / len(keys))
        assert abs(held / len(keys) - frac) < 3 * se


def test_deterministic_and_fingerprint(stdlib_splits):
    train, val = stdlib_splits
    again = corpus.load_split(_data(), "train")
    assert [again.key(i) for i in range(len(again))] == [train.key(i) for i in range(len(train))]
    assert again.fingerprint() == train.fingerprint() != val.fingerprint()
    other = corpus.load_split(_data(val_fraction=0.2), "train")
    assert other.fingerprint() != train.fingerprint() and len(other) < len(train)


def test_picklable(stdlib_splits):
    train, _ = stdlib_splits
    clone = pickle.loads(pickle.dumps(train))
    assert len(clone) == len(train) and clone[7] == train[7] and clone.key(7) == train.key(7)
    assert clone.stats == train.stats


def test_max_doc_bytes_cuts_into_pieces(stdlib_splits):
    train, _ = stdlib_splits
    cut = corpus.load_split(_data(max_doc_bytes=4096), "train")
    assert cut.stats["bytes"] == train.stats["bytes"]
    assert cut.stats["cut_documents"] == sum(train.size(i) > 4096 for i in range(len(train)))
    j = 0
    for i in range(len(train)):
        doc, key = train[i], train.key(i)
        if len(doc) <= 4096:
            assert cut.key(j) == key and cut[j] == doc
            j += 1
            continue
        pieces = []
        while j < len(cut) and cut.key(j).startswith(key + "#"):
            assert cut.key(j) == f"{key}#{len(pieces)}" and 0 < len(cut[j]) <= 4096
            pieces.append(cut[j])
            j += 1
        assert b"".join(pieces) == doc
    assert j == len(cut)


@pytest.fixture(scope="module")
def some_docs(stdlib_splits):
    train, _ = stdlib_splits
    return [(train.key(i), train[i]) for i in range(0, 400, 4)]


def test_dir_source_glob_and_sorting(tmp_path, some_docs):
    for k, (key, doc) in enumerate(some_docs[:30]):
        sub = tmp_path / ("b" if k % 2 else "a") / ("deep" if k % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{k:02d}.py").write_bytes(doc)
        (sub / f"f{k:02d}.txt").write_bytes(b"not python")
    (tmp_path / "empty.py").write_bytes(b"")
    d = _data(source="dir", path=str(tmp_path), glob="**/*.py", val_fraction=0.0)
    src = corpus.load_split(d, "train")
    keys = [src.key(i) for i in range(len(src))]
    assert len(src) == 30 and keys == sorted(keys) and all(k.endswith(".py") for k in keys)
    assert src.stats["skipped_empty"] == 1
    expected = {f"f{k:02d}.py": doc for k, (_, doc) in enumerate(some_docs[:30])}
    assert all(src[i] == expected[os.path.basename(src.key(i))] for i in range(len(src)))
    assert len(corpus.load_split(_data(source="dir", path=str(tmp_path), glob="a/*.py", val_fraction=0.0),
                                 "train")) == len([k for k in range(30) if k % 2 == 0 and k % 3 != 0])
    assert len(corpus.load_split(d, "validation")) == 0
    with pytest.raises(ValueError, match="not a folder"):
        corpus.load_split(_data(source="dir", path=str(tmp_path / "missing")), "train")
    with pytest.raises(ValueError, match="glob"):
        corpus.load_split(_data(source="dir", path=str(tmp_path), glob="*.rs"), "train")


def _write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for key, doc in docs:
            f.write(json.dumps({field: doc.decode("utf-8"), "path": key}) + "\n")


def _utf8_docs(docs):
    out = []
    for key, doc in docs:
        try:
            doc.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append((key, doc))
    return out


def test_jsonl_source_fields_and_offsets(tmp_path, some_docs):
    docs = _utf8_docs(some_docs)
    half = len(docs) // 2
    _write_jsonl(tmp_path / "a.jsonl", docs[:half], field="text")
    _write_jsonl(tmp_path / "b.jsonl", docs[half:], field="content")  # falls back to "content"
    with open(tmp_path / "b.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"content": ""}) + "\n\n")  # an empty document and a blank line
        f.write(json.dumps({"text": "lone surrogate \udc80 kept"}) + "\n")
    src = corpus.load_split(_data(source="jsonl", path=str(tmp_path), val_fraction=0.0), "train")
    assert len(src) == len(docs) + 1
    assert [src[i] for i in range(len(docs))] == [d for _, d in docs]
    assert src[len(docs)] == "lone surrogate \udc80 kept".encode("utf-8", "surrogatepass")
    assert src.key(0) == "a.jsonl:1" and src.key(half) == "b.jsonl:1"
    assert src.stats["skipped_empty"] == 1 and src.stats["skipped_blank_lines"] == 1
    assert pickle.loads(pickle.dumps(src))[5] == src[5]
    single = corpus.load_split(_data(source="jsonl", path=str(tmp_path / "a.jsonl"), val_fraction=0.0), "train")
    assert len(single) == half
    globbed = corpus.load_split(_data(source="jsonl", path=str(tmp_path / "*.jsonl"), val_fraction=0.0), "train")
    assert globbed.fingerprint() == src.fingerprint()
    # The configured field wins over the fallback.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.jsonl").write_text(json.dumps({"code": "A", "content": "B"}) + "\n")
    assert corpus.load_split(_data(source="jsonl", path=str(tmp_path / "c"), text_field="code",
                                   val_fraction=0.0), "train")[0] == b"A"


@pytest.mark.parametrize("bad,reason", [("{not json", "bad JSON"), ('{"text": 5}', "not a string"),
                                        ('{"other": "x"}', "none of the fields"), ("[1, 2]", "JSON object")])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad, reason):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(5)]
    lines.insert(3, bad)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{path}:4: .*{reason}.*skip_malformed=True"):
        corpus.load_split(_data(source="jsonl", path=str(path)), "train")
    d = _data(source="jsonl", path=str(path), skip_malformed=True, val_fraction=0.0)
    src = corpus.load_split(d, "train")
    assert len(src) == 5 and src.stats["skipped_malformed"] == 1
    assert [src[i] for i in range(5)] == [f"doc {i}".encode() for i in range(5)]
    assert src.key(3) == "data.jsonl:5"


def test_jsonl_gz_and_missing_path_are_clear_errors(tmp_path):
    (tmp_path / "x.jsonl.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="gunzip"):
        corpus.load_split(_data(source="jsonl", path=str(tmp_path / "x.jsonl.gz")), "train")
    with pytest.raises(ValueError, match="matches no JSONL"):
        corpus.load_split(_data(source="jsonl", path=str(tmp_path / "nothing*.jsonl")), "train")
    with pytest.raises(ValueError, match="is empty"):
        corpus.load_split(_data(source="jsonl", path=""), "train")


def test_arrayrecord_source(tmp_path, some_docs):
    from array_record.python import array_record_module
    docs = [d for _, d in some_docs] + [b"", b"\xff\xfe invalid utf-8 \x80"]
    for name, part in (("p0.array_record", docs[:60]), ("p1.array_record", docs[60:])):
        w = array_record_module.ArrayRecordWriter(str(tmp_path / name), "group_size:1")
        for d in part:
            w.write(d)
        w.close()
    train = corpus.load_split(_data(source="arrayrecord", path=str(tmp_path)), "train")
    val = corpus.load_split(_data(source="arrayrecord", path=str(tmp_path)), "validation")
    got = {train.key(i): train[i] for i in range(len(train))} | {val.key(i): val[i] for i in range(len(val))}
    want = {f"p{0 if i < 60 else 1}.array_record:{i if i < 60 else i - 60}": d for i, d in enumerate(docs) if d}
    assert got == want and train.stats["skipped_empty"] == 1
    clone = pickle.loads(pickle.dumps(train))
    assert clone[len(train) - 1] == train[len(train) - 1]


def test_tfds_source_from_a_locally_built_dataset(tmp_path, some_docs):
    """A tiny TFDS dataset in ArrayRecord format, built here without TensorFlow."""
    tfds = pytest.importorskip("tensorflow_datasets")
    docs = [d.decode("utf-8", "replace") for _, d in some_docs[:25]] + [""]

    class ProxyJaxTinyCode(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"content": tfds.features.Text(), "stars": np.int32}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, d in enumerate(docs):
                yield i, {"content": d, "stars": i}

    ProxyJaxTinyCode(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    d = _data(source="tfds", path="proxy_jax_tiny_code", tfds_data_dir=str(tmp_path), val_fraction=0.2)
    train, val = corpus.load_split(d, "train"), corpus.load_split(d, "validation")
    assert len(train) + len(val) == 25 and train.stats["skipped_empty"] == 1
    got = sorted([train[i] for i in range(len(train))] + [val[i] for i in range(len(val))])
    assert got == sorted(x.encode("utf-8") for x in docs if x)
    assert train.key(0).startswith("proxy_jax_tiny_code/train/")
    assert pickle.loads(pickle.dumps(train))[0] == train[0]
    with pytest.raises(ValueError, match="cannot open TFDS dataset"):
        corpus.load_split(_data(source="tfds", path="no_such_dataset_xyz", tfds_data_dir=str(tmp_path)), "train")


def test_config_errors():
    with pytest.raises(ValueError, match="split"):
        corpus.load_split(_data(), "test")
    with pytest.raises(ValueError, match="source"):
        corpus.load_split(_data(source="s3"), "train")
    from proxy_jax import config as config_lib

    for bad in (1.0, 1.5, -0.1):  # one range, [0, 1), checked where the value enters
        c = config_lib.base_config()
        c.data.val_fraction = bad
        with pytest.raises(ValueError, match="val_fraction"):
            config_lib.validate(c)
    with pytest.raises(ValueError, match="manifest.json"):
        corpus.load_split(_data(source="preprocessed", path="/nonexistent"), "train")
