"""``data.index="lazy"``: a corpus indexed from metadata only gives the same documents, skips the empty ones
where it meets them (taking no place and no draw) and resumes exactly; ``"auto"`` picks it for large corpora
and a run keeps its choice."""

import json
import os

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import config_with, stdlib_docs
from proxy_jax import workdir as workdir_lib
from proxy_jax.data import corpus, pipeline

DOCS = stdlib_docs(40, 3000)
BYTES_ONLY = {"proxy.name": "bytes", "mix.rate_init": 0.0, "mix.rate_peak": 0.0, "mix.rate_final": 0.0,
              "data.seq_len": 128, "data.batch_size": 4, "data.val_fraction": 0.0}


def _rows():
    """The documents with null and empty rows among them (every 6th row from the 3rd)."""
    rows = []
    for k, doc in enumerate(DOCS):
        if k % 6 == 2:
            rows.append(None if k % 12 == 2 else "")
        rows.append(doc.decode())
    return rows


def _write_parquet(folder, row_group_size=4):
    rows = _rows()
    half = len(rows) // 2
    for name, part in (("a.parquet", rows[:half]), ("b/c.parquet", rows[half:])):
        os.makedirs(folder / os.path.dirname(name) if os.path.dirname(name) else folder, exist_ok=True)
        pq.write_table(pa.table({"text": pa.array(part, pa.string())}), folder / name, row_group_size=row_group_size)
    return folder


def _config(source, path, **kw):
    return config_with(**{"data.source": source, "data.path": str(path), **BYTES_ONLY, **kw})


def _split(source, path, index, **kw):
    return corpus.load_split(_config(source, path, **{"data.index": index, **kw}).data, "train")


def test_a_parquet_footer_index_holds_every_row_and_reads_the_same_documents(tmp_path):
    _write_parquet(tmp_path)
    full, lazy = _split("parquet", tmp_path, "full"), _split("parquet", tmp_path, "lazy")
    assert lazy.lazy and not full.lazy
    assert len(lazy) == len(_rows()) and len(full) == len(DOCS)  # null and empty rows stay in a lazy index
    assert lazy.size(0) == -1 and full.size(0) == len(DOCS[0])
    by_key = {lazy.key(i): lazy[i] for i in np.random.default_rng(0).permutation(len(lazy)).tolist()}
    assert all(by_key[full.key(i)] == full[i] for i in range(len(full)))
    assert [d for d in (lazy[i] for i in range(len(lazy))) if d] == DOCS
    assert sum(1 for i in range(len(lazy)) if not lazy[i]) == len(_rows()) - len(DOCS)


def test_the_lazy_fingerprint_follows_the_files(tmp_path):
    _write_parquet(tmp_path)
    before = _split("parquet", tmp_path, "lazy").fingerprint()
    assert _split("parquet", tmp_path, "lazy").fingerprint() == before
    rows = _rows()[: len(_rows()) // 2]
    rows[0] = rows[0] + " changed"  # same row count, other content
    pq.write_table(pa.table({"text": pa.array(rows, pa.string())}), tmp_path / "a.parquet", row_group_size=4)
    assert _split("parquet", tmp_path, "lazy").fingerprint() != before


def _placed(config, source, batches=30):
    """Documents in the order the packer places them, and the batches."""
    order = []
    it = iter(pipeline.make_pipeline(config, source=source, process_index=0, process_count=1,
                                     on_document=lambda **kw: order.append(kw["index"])))
    out = [next(it) for _ in range(batches)]
    return order, out


def test_empty_documents_take_no_place_and_the_pipeline_resumes_exactly(tmp_path):
    _write_parquet(tmp_path)
    c = _config("parquet", tmp_path, **{"data.index": "lazy"})
    source = corpus.load_split(c.data, "train")
    order, ref = _placed(c, source)
    # The shard's shuffled order (the document stage's), with the empty documents left out: nothing else moves.
    shuffled = grain.MapDataset.range(len(source)).shuffle(seed=int(c.seed) % 2**32).repeat(None)
    expected = [int(shuffled[k]) for k in range(3 * len(source))]
    expected = [i for i in expected if source[i]][: len(order)]
    assert order == expected
    it = iter(pipeline.make_pipeline(c, source=source, process_index=0, process_count=1))
    for _ in range(11):
        next(it)
    fresh = iter(pipeline.make_pipeline(c, source=source, process_index=0, process_count=1))
    fresh.set_state(json.loads(json.dumps(it.get_state())))
    for k in range(11, 30):
        np.testing.assert_array_equal(next(fresh)["tokens"], ref[k]["tokens"])


def test_a_lazy_jsonl_index_meets_a_malformed_line_where_it_reads_it(tmp_path):
    lines = [json.dumps({"text": d.decode()}) for d in DOCS[:12]]
    path = tmp_path / "c.jsonl"
    broken = lines[:5] + ["{not json"] + lines[5:] + [""]
    path.write_text("\n".join(broken) + "\n", encoding="utf-8")
    lazy = _split("jsonl", path, "lazy")
    assert len(lazy) == 13 and lazy.stats["skipped_blank_lines"] == 1  # the blank line only
    with pytest.raises(ValueError, match=r"c\.jsonl:6' is malformed: bad JSON .*skip_malformed=True") as e:
        lazy[5]
    assert "\n" not in str(e.value)
    assert [lazy[i] for i in range(13) if i != 5] == DOCS[:12]
    skipping = _split("jsonl", path, "lazy", **{"data.skip_malformed": True})
    assert skipping[5] == b""
    # A skipped malformed line is an empty document: the batches are those of an empty text in its place.
    emptied = tmp_path / "e" / "c.jsonl"
    emptied.parent.mkdir()
    emptied.write_text("\n".join(lines[:5] + [json.dumps({"text": ""})] + lines[5:] + [""]) + "\n", encoding="utf-8")
    c = _config("jsonl", path, **{"data.index": "lazy", "data.skip_malformed": True})
    c_empty = _config("jsonl", emptied, **{"data.index": "lazy"})
    _, got = _placed(c, skipping, 8)
    _, want = _placed(c_empty, corpus.load_split(c_empty.data, "train"), 8)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_lazy_arrow_and_arrayrecord_indexes_read_the_same_documents(tmp_path):
    rows = _rows()
    table = pa.table({"text": pa.array(rows, pa.string())})
    (tmp_path / "hf").mkdir()
    with pa.OSFile(str(tmp_path / "hf" / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=7)
    lazy = _split("hf_disk", tmp_path / "hf", "lazy")
    assert len(lazy) == len(rows) and [d for d in lazy if d] == DOCS

    from array_record.python import array_record_module
    path = str(tmp_path / "c.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for r in rows:
        writer.write((r or "").encode())
    writer.close()
    lazy, full = _split("arrayrecord", path, "lazy"), _split("arrayrecord", path, "full")
    assert len(lazy) == len(rows) and len(full) == len(DOCS)
    assert [d for d in lazy if d] == list(full) == DOCS


def test_auto_reads_metadata_only_for_a_large_corpus(tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for k in range(corpus.LAZY_FROM_FILES):
        (many / f"{k:04d}.jsonl").write_text(json.dumps({"text": f"document {k}"}) + "\n")
    assert corpus.resolve_index(_config("jsonl", many).data) == "lazy"
    assert corpus.resolve_index(_config("jsonl", many, **{"data.max_doc_bytes": 100}).data) == "full"
    os.remove(many / "0000.jsonl")
    assert corpus.resolve_index(_config("jsonl", many).data) == "full"  # 999 small files: read them all
    assert corpus.resolve_index(_config("stdlib", "", **{"data.index": "lazy"}).data) == "full"
    with pytest.raises(ValueError, match="index='lazy' cannot cut documents"):
        from proxy_jax import config as config_lib
        config_lib.validate(_config("jsonl", many, **{"data.index": "lazy", "data.max_doc_bytes": 100}))


def test_a_run_keeps_its_index_and_an_older_run_resumes_with_the_full_one(tmp_path):
    saved = _config("jsonl", tmp_path / "c.jsonl", **{"data.index": "lazy"})
    workdir_lib.save_config(saved, str(tmp_path))
    os.makedirs(tmp_path / "checkpoints" / "10")
    resumed = _config("jsonl", tmp_path / "c.jsonl")  # "auto" takes the saved choice
    workdir_lib.check_resume(resumed, str(tmp_path))
    assert resumed.data.index == "lazy"
    flipped = _config("jsonl", tmp_path / "c.jsonl", **{"data.index": "full"})
    with pytest.raises(workdir_lib.ConfigMismatchError, match="data.index"):
        workdir_lib.check_resume(flipped, str(tmp_path))
    # A lazy run stopped by a malformed line resumes skipping such lines (no other document moves).
    assert workdir_lib.check_resume(_config("jsonl", tmp_path / "c.jsonl", **{"data.skip_malformed": True}),
                                    str(tmp_path)) == {"data.skip_malformed": (False, True)}
    old = json.loads((tmp_path / "config.json").read_text())
    del old["data"]["index"]  # a run saved before the switch existed
    (tmp_path / "config.json").write_text(json.dumps(old))
    before = _config("jsonl", tmp_path / "c.jsonl")
    workdir_lib.check_resume(before, str(tmp_path))
    assert before.data.index == "full"


def test_a_run_on_a_large_corpus_indexes_it_lazily_resumes_and_evaluates(tmp_path, monkeypatch):
    import helpers
    from proxy_jax import recipes, train
    from proxy_jax.evaluation import score

    _write_parquet(tmp_path / "corpus")
    monkeypatch.setattr(corpus, "LAZY_FROM_FILES", 2)  # the two files count as a large corpus
    run = str(tmp_path / "run")
    settings = {**helpers.TINY_RUN, "data.source": "parquet", "data.path": str(tmp_path / "corpus"),
                "data.max_doc_bytes": 0, "train.checkpoint_every": 2}
    train.train(recipes.load_config(os.path.join(helpers.ROOT, "configs/bytes.py:tiny"), **settings), run,
                progress=False)
    assert json.loads(open(os.path.join(run, "config.json")).read())["data"]["index"] == "lazy"
    monkeypatch.setattr(corpus, "LAZY_FROM_FILES", 10**6)  # "auto" would now say full: the run keeps lazy
    longer = recipes.load_config(os.path.join(helpers.ROOT, "configs/bytes.py:tiny"), **{**settings, "train.steps": 5})
    train.train(longer, run, progress=False)
    losses = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl")) if "train/loss" in line]
    assert [m["step"] for m in losses][-2:] == [3, 4] and all(np.isfinite([m["train/loss"] for m in losses]))
    out = score.evaluate_workdir(run)
    assert np.isfinite(out["raw_bpb"]) and out["raw_bytes"] > 0
