"""Preprocessed shards: determinism, resuming, process sharding, manifest, the preprocessed source."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import STDLIB, config_with
from proxy_jax import assemble
from proxy_jax.assemble import make_proxy
from proxy_jax.data import corpus, records, shard_writer, shards, sources



def _config(proxy="gzip", **proxy_kw):
    """A small real corpus: the standard library's email package (about 30 files)."""
    return config_with(**{"data.source": "dir", "data.path": STDLIB, "data.glob": "email/**/*.py",
                          "data.val_fraction": 0.2, "proxy.name": proxy,
                          **{f"proxy.{k}": v for k, v in proxy_kw.items()}})


def _files(out):
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(out) for f in fs if not os.path.relpath(d, out).startswith("work")}


def _run(out, config=None, **kw):
    return assemble.preprocess(config or _config(), str(out), progress_bar=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    manifest = _run(out, num_shards=3)
    return out, manifest, _files(out)


def test_manifest_counts_and_ratio(reference):
    out, manifest, _ = reference
    c = _config()
    assert manifest["complete"] and manifest["num_shards"] == 3 and manifest["proxy_name"] == "gzip"
    assert manifest["num_symbols"] == 256 and manifest["proxy"] == {"name": "gzip", "num_symbols": 256, "level": 9}
    assert json.load(open(out / "manifest.json")) == manifest
    for split in ("train", "validation"):
        src = corpus.load_split(c.data, split)
        pre = corpus.load_split(pp_data(out), split, proxy_config=c.proxy)
        info = manifest["splits"][split]
        assert len(pre) == len(src) == info["documents"] > 0
        n_bytes = n_sym = 0
        for i in range(len(pre)):
            rec = pre.record(i)
            assert rec.index == i and rec.key == src.key(i) and rec.raw == src[i] == pre[i]
            assert np.array_equal(rec.comp, make_proxy(c).encode(rec.raw))
            n_bytes += len(rec.raw)
            n_sym += rec.comp.size
        assert (info["bytes"], info["symbols"]) == (n_bytes, n_sym)
        assert info["ratio"] == pytest.approx(n_bytes / n_sym, rel=1e-5)
        assert pre.fingerprint() == src.fingerprint()
        assert isinstance(pre, sources.DocumentSource) and pre.stats["documents"] == len(pre)
        clone = pickle.loads(pickle.dumps(pre))  # Grain workers receive the source pickled
        assert clone.record(len(pre) - 1) == pre.record(-1)
        with pytest.raises(IndexError):
            pre[len(pre)]
    total = sum(v["bytes"] for v in manifest["splits"].values()) / sum(v["symbols"] for v in manifest["splits"].values())
    assert manifest["ratio"] == pytest.approx(total, rel=1e-5)


def pp_data(out):
    d = config_with().data
    d.source, d.path = "preprocessed", str(out)
    return d


def test_two_runs_are_byte_identical(reference, tmp_path):
    _, manifest, files = reference
    again = _run(tmp_path, num_shards=3)
    assert again == manifest
    assert _files(tmp_path) == files


def test_resume_after_interruption(reference, tmp_path, monkeypatch):
    _, _, files = reference
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    os.remove(out / shards.shard_name("train", 1, 3))  # a lost shard
    os.rename(out / shards.shard_name("validation", 2, 3),  # killed while writing: only a temp file
              out / (shards.shard_name("validation", 2, 3) + ".tmp999"))
    os.remove(out / shard_writer.STATS_DIR / (shards.shard_name("train", 2, 3) + ".json"))  # killed before its stats
    os.remove(out / "manifest.json")
    written = []
    real = shard_writer.write_shard
    monkeypatch.setattr(shard_writer, "write_shard", lambda o, split, shard, *a: written.append((split, shard))
                        or real(o, split, shard, *a))
    manifest = _run(out, num_shards=3)
    assert sorted(written) == [("train", 1), ("train", 2), ("validation", 2)]
    assert _files(out) == files  # no temp file left, nothing duplicated
    written.clear()
    assert _run(out, num_shards=3) == manifest and written == []  # a finished run does nothing
    pre = corpus.load_split(pp_data(out), "train")
    assert [pre.record(i).index for i in range(len(pre))] == list(range(len(pre)))


def test_changed_settings_are_not_mistaken_for_finished_shards(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    m = _run(out, config=_config(gzip_level=1), num_shards=3, overwrite=True)
    assert m["proxy"]["level"] == 1
    rec = corpus.load_split(pp_data(out), "train").record(0)
    assert np.array_equal(rec.comp, make_proxy(_config(gzip_level=1)).encode(rec.raw))


def test_two_processes_cover_every_document_once(reference, tmp_path):
    _, manifest, files = reference
    m1 = _run(tmp_path, num_shards=3, process_index=1, process_count=2)
    assert not m1["complete"] and not (tmp_path / "manifest.json").exists()
    written = sorted(f for f in os.listdir(tmp_path) if f.endswith(".array_record"))
    assert written == sorted(shards.shard_name(s, 1, 3) for s in ("train", "validation"))
    m0 = _run(tmp_path, num_shards=3, process_index=0, process_count=2)
    assert m0 == manifest and _files(tmp_path) == files
    for split in ("train", "validation"):
        src, pre = corpus.load_split(_config().data, split), corpus.load_split(pp_data(tmp_path), split)
        recs = [pre.record(i) for i in range(len(pre))]
        assert sorted(r.index for r in recs) == list(range(len(src)))
        assert [r.key for r in recs] == [src.key(i) for i in range(len(src))]


def test_tokenizer_shards_carry_their_tokenizer(tmp_path):
    c = _config("tokens_as_bytes", vocab_size=600, train_max_bytes=1_000_000, gray_code=True)
    m = _run(tmp_path / "out", config=c, num_shards=2, cache_dir=str(tmp_path / "work"))
    assert m["tokenizer_model"] == "tokenizer.model" and os.listdir(tmp_path / "work" / "proxy")
    assert m["proxy"]["gray_code"] and m["proxy"]["tokenizer_vocab_size"] == 600
    tr = c.copy_and_resolve_references()
    tr.data.source, tr.data.path = "preprocessed", str(tmp_path / "out")
    proxy = make_proxy(tr)  # loads the shards' own tokenizer, no training
    pre = corpus.load_split(tr.data, "validation", proxy_config=tr.proxy)
    for i in range(len(pre)):
        rec = pre.record(i)
        assert proxy.decode(rec.comp) == rec.raw
    # Half as many bytes per symbol as the tokenizer's bytes per token (2 symbols per token).
    assert 0.8 < m["splits"]["train"]["ratio"] < 2.0
    tr.proxy.vocab_size = 700
    with pytest.raises(ValueError, match=r"made with proxy settings .*'vocab_size': 600.*gives .*'vocab_size': 700"):
        corpus.load_split(tr.data, "train", proxy_config=tr.proxy)
    with pytest.raises(ValueError, match="vocab_size"):
        make_proxy(tr)


def test_output_made_with_other_settings_is_refused_unless_overwrite(reference, tmp_path):
    out = tmp_path / "out"
    tok = _config("tokens_as_bytes", vocab_size=600, train_max_bytes=1_000_000)
    _run(out, config=tok, num_shards=2, cache_dir=str(tmp_path / "work"))
    before = _files(out)
    with pytest.raises(ValueError, match=r"already holds shards made with other settings: proxy .*'gzip'.*"
                                         r"--overwrite") as e:
        _run(out, num_shards=3)
    assert "\n" not in str(e.value) and _files(out) == before  # refused: nothing touched
    m = _run(out, num_shards=3, overwrite=True)
    assert "tokenizer_model" not in m and not (out / shards.TOKENIZER).exists()  # nothing stale is left
    assert m == reference[1] and _files(out) == reference[2]  # the same as a fresh run into an empty folder
    assert _run(out, num_shards=3) == reference[1]  # the same settings again: kept (resumed), not refused
    # An interrupted output (no manifest yet) is recognised by its shards' statistics.
    os.remove(out / shards.MANIFEST)
    with pytest.raises(ValueError, match="other settings"):
        _run(out, config=_config(gzip_level=1), num_shards=3)


def test_records_encode_decode():
    rng = np.random.default_rng(0)
    for comp, small in ((rng.integers(64, 65536, 1000), True), (rng.integers(320, 200_000, 50), False),
                        (np.zeros(0, np.int32), True)):
        rec = records.Record(index=7, key="a/b.py#2 ✓", raw=bytes(rng.integers(0, 256, 33, dtype=np.uint8)),
                             comp=comp.astype(np.int32))
        b = records.encode_record(rec)
        assert len(b) == records.HEADER_BYTES + len(rec.key.encode()) + 33 + comp.size * (2 if small else 4)
        back = records.decode_record(b)
        assert back == rec and back.comp.dtype == np.int32
        assert np.array_equal(records.decode_comp_ids(b), rec.comp)
    with pytest.raises(ValueError, match="not a proxy_jax record"):
        records.decode_record(b"garbage")
    with pytest.raises(ValueError, match="corrupt record"):
        records.decode_record(b + b"\0")


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="process_index"):
        _run(tmp_path, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="splits"):
        _run(tmp_path, splits=("test",))
    with pytest.raises(ValueError, match="num_shards"):
        _run(tmp_path, num_shards=0)
    c = _config()
    c.data.source = "preprocessed"
    with pytest.raises(ValueError, match="already preprocessed"):
        _run(tmp_path, config=c)


def test_command_line(tmp_path, reference):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("from proxy_jax.config import base_config\n\n\ndef get_config():\n"
                   "    c = base_config()\n    c.proxy.name = 'gzip'\n    return c\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "proxy_jax.preprocess", f"--config={cfg}", f"--output={out}",
                        "--num_shards=3", "--splits=validation", "--config.data.source=dir",
                        f"--config.data.path={STDLIB}", "--config.data.glob=email/**/*.py",
                        "--config.data.val_fraction=0.2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "validation:" in r.stdout and "bytes/symbol" in r.stdout
    m = json.load(open(out / "manifest.json"))
    assert list(m["splits"]) == ["validation"]
    assert m["splits"]["validation"] == reference[1]["splits"]["validation"]


def test_cutting_applies_to_training_documents_only(tmp_path):
    c = _config()
    c.data.max_doc_bytes = 1024
    manifest = _run(tmp_path, config=c, num_shards=2)
    whole = corpus.load_split(_config().data, "validation")
    cut_train = corpus.load_split(c.data, "train")
    pre_val = corpus.load_split(pp_data(tmp_path), "validation", proxy_config=c.proxy)
    pre_train = corpus.load_split(pp_data(tmp_path), "train", proxy_config=c.proxy)
    # Held-out documents stay whole (evaluation scores them so); training ones are cut to 1 KiB pieces.
    assert [pre_val[i] for i in range(len(pre_val))] == [whole[i] for i in range(len(whole))]
    assert len(pre_train) == len(cut_train) == manifest["splits"]["train"]["documents"]
    assert max(len(pre_train[i]) for i in range(len(pre_train))) == 1024
