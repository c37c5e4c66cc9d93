"""Weighted mixtures of sources (data.mixture): the definition and its checks, the slot -> component
function, the ratio of documents drawn, stages, per-component rates, exact resume (same and another
process count), the metrics and evaluation of a tiny training run."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import helpers
from proxy_jax import assemble, checkpoint, metrics, train
from proxy_jax import workdir as workdir_lib
from proxy_jax.data import elastic, mixing, mixture, mixture_stream, pipeline
from proxy_jax.proxies.simple import GzipProxy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Parquet folder (column ``content``, two files) and a JSONL file (field ``text``) of short excerpts of the
    standard library's top-level files (up to 240 of them, 168 on CPython 3.11), 40-400 bytes each, so a
    batch holds many documents."""
    root = tmp_path_factory.mktemp("mixture")
    rng = np.random.default_rng(0)
    texts = []
    for p in helpers.stdlib_paths(240):
        body = p.read_text(errors="replace")
        texts.append(body[: int(rng.integers(40, 400))] or p.name)
    (root / "pq").mkdir()
    pq.write_table(pa.table({"content": texts[:120]}), root / "pq" / "a.parquet")
    pq.write_table(pa.table({"content": texts[120:]}), root / "pq" / "b.parquet")
    with open(root / "prose.jsonl", "w") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t[::-1]}) + "\n")  # other bytes than the Parquet documents
    return root


def components(root, code=3, prose=1, extra=None):
    extra = extra or {}
    return [{"name": "code", "source": "parquet", "path": str(root / "pq"), "text_field": "content", "weight": code,
             **extra.get("code", {})},
            {"name": "prose", "source": "jsonl", "path": str(root / "prose.jsonl"), "weight": prose,
             **extra.get("prose", {})}]


def config(root, mix=None, **dotted):
    c = helpers.config_with(**{"data.seq_len": 64, "data.batch_size": 4, "data.virtual_shards": 2,
                               "data.val_fraction": 0.1, "mix.warmup_steps": 3, "mix.steady_steps": 4,
                               "mix.mode_warmup": "parallel_random", **dotted})
    c.data.mixture = components(root) if mix is None else mix
    return c


def run_pipeline(c, n, count=1, proxy=GzipProxy()):
    """``n`` global batches of ``count`` processes and the draws (index, epoch, step, arrangement, component)."""
    draws = []
    hook = lambda **d: draws.append((d["index"], d["epoch"], d["step"], d["arrangement"], d["component"]))  # noqa: E731
    source = mixture_stream.load_split(c.data, "train")
    its = [iter(pipeline.make_pipeline(c, proxy=proxy, source=source, process_index=p, process_count=count,
                                       on_document=hook)) for p in range(count)]
    out = []
    for _ in range(n):
        parts = [next(it) for it in its]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out, draws, its


# ---- the definition ---------------------------------------------------------------------------------

def test_resolve_normalises_and_reads_json_and_yaml_files(data, tmp_path):
    mix = mixture.resolve(components(data))
    assert [c["weight"] for c in mix["components"]] == [0.75, 0.25]
    assert mixture.resolve(mix) == mix  # the canonical form resolves to itself (what config.json records)
    spec = {"components": components(data, 2, 2), "stages": [{"start_step": 5, "weights": {"prose": 3}}]}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    a, b = mixture.resolve(str(tmp_path / "m.json")), mixture.resolve(str(tmp_path / "m.yaml"))
    assert a == b and a["stages"] == [{"start_step": 5, "weights": {"code": 0.0, "prose": 1.0}}]
    assert [c["weight"] for c in a["components"]] == [0.5, 0.5]
    staged = mixture.resolve({"components": [{k: v for k, v in c.items() if k != "weight"} for c in components(data)],
                              "stages": [{"start_step": 0, "weights": {"code": 1, "prose": 4}}]})
    assert [c["weight"] for c in staged["components"]] == [0.2, 0.8] and staged["stages"] == []


@pytest.mark.parametrize("change,match", [
    (lambda m: m[0].update(weight=-1), "negative"),
    (lambda m: [c.update(weight=0) for c in m], "all zero"),
    (lambda m: m[0].update(weight="3"), "not a number"),
    (lambda m: m[0].update(colour="red"), r"unknown keys \['colour'\]"),
    (lambda m: m[1].update(name="code"), r"names \['code'\] more than once"),
    (lambda m: m[1].update(name="pro/se"), "part of metric keys"),
    (lambda m: m[1].update(source="csv"), "has source 'csv'"),
    (lambda m: m[1].pop("path"), "needs a 'path'"),
    (lambda m: m[1].pop("weight"), r"\['prose'\] have no weight"),
    (lambda m: m[0].update(rate_peak=1.5), "not a rate"),
])
def test_bad_definitions_are_refused_in_one_sentence(data, change, match):
    mix = components(data)
    change(mix)
    with pytest.raises(mixture.MixtureError, match=match) as err:
        mixture.resolve(mix)
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")


def test_bad_stages_and_a_data_path_beside_a_mixture_are_refused(data):
    for stages, match in (([{"start_step": 4, "weights": {"novel": 1}}], "unknown components"),
                          ([{"start_step": 4, "weights": {"code": 0}}], "all zero"),
                          ([{"start_step": 6, "weights": {"code": 1}}, {"start_step": 2, "weights": {"code": 1}}],
                           "increasing order"),
                          ([{"start_step": -1, "weights": {"code": 1}}], "start_step"),
                          ([{"start_step": 0, "weights": {"code": 1}}], "in one place only")):
        with pytest.raises(mixture.MixtureError, match=match):
            mixture.resolve({"components": components(data), "stages": stages})
    c = config(data, **{"data.path": "/somewhere"})
    with pytest.raises(mixture.MixtureError, match="data.path='/somewhere' is set beside data.mixture"):
        assemble.validate(c)
    c = config(data, components(data, extra={"code": {"rate_peak": 0.5}}), **{"mix.rate_init": 0.0, "mix.rate_peak": 0.0,
                                                                     "mix.rate_final": 0.0})
    with pytest.raises(mixture.MixtureError, match="no schedule to scale"):
        assemble.validate(c)


# ---- which component a slot reads -------------------------------------------------------------------

def test_slot_component_is_a_pure_low_discrepancy_function():
    cum = np.array([0.2, 0.5, 1.0])
    slots = np.arange(100_000)
    for seed, shard in ((0, 0), (0, 1), (7, 3)):
        c = mixture.components_of(seed, shard, slots, cum)
        picks = np.random.default_rng(seed).integers(0, len(slots), 200)
        assert [mixture.component_of(seed, shard, int(i), cum) for i in picks] == c[picks].tolist()
        np.testing.assert_array_equal(mixture.components_of(seed, shard, slots[::-1], cum), c[::-1])  # order-free
        # Every prefix of the slots holds each component within 5 documents of its weight (independent draws
        # would stray by ~sqrt(n w (1 - w)), 120 documents at 10^5 slots).
        for k, w in enumerate((0.2, 0.3, 0.5)):
            assert np.abs(np.cumsum(c == k) - w * np.arange(1, len(slots) + 1)).max() < 5
    assert not np.array_equal(mixture.components_of(0, 0, slots, cum), mixture.components_of(0, 1, slots, cum))
    assert mixture.components_of(0, 0, slots, np.array([0.5, 0.5, 1.0])).tolist().count(1) == 0  # weight 0


# The byte baseline: no compressed views, so many documents per batch and no proxy to run.
BYTES = {"proxy.name": "bytes", "mix.rate_init": 0.0, "mix.rate_peak": 0.0, "mix.rate_final": 0.0,
         "mix.mode_warmup": "vanilla", "mix.mode_steady": "vanilla", "mix.mode_final": "vanilla"}


def test_pipeline_draws_at_the_weights_and_counts_them(data, caplog):
    c = config(data, **BYTES, **{"data.seq_len": 256, "data.batch_size": 16, "data.virtual_shards": 4})
    mixture_stream._EPOCHS_LOGGED.clear()  # pylint: disable=protected-access
    with caplog.at_level("INFO", logger="proxy_jax.data.mixture_stream"):
        batches, draws, _ = run_pipeline(c, 150, proxy=None)
    names = [d[4] for d in draws]
    assert len(names) > 2000
    ratio = names.count("code") / names.count("prose")
    assert abs(ratio / 3 - 1) < 0.03, ratio
    # data/NAME/docs: the batch's counts are the documents drawn so far, all shards together.
    counts = mixture.doc_metrics(batches[-1]["mixture_docs"], mixture.resolve(c.data.mixture))
    assert {k: int(v) for k, v in counts.items()} == {"data/code/docs": names.count("code"),
                                                      "data/prose/docs": names.count("prose")}
    # Both components ran through their documents: each starts a new epoch in a new order of its own.
    source = mixture_stream.load_split(c.data, "train")
    for name, comp in zip(source.names, source.components):
        epochs = [d[1] for d in draws if d[4] == name]
        assert max(epochs) >= 1 and epochs.count(0) == len(comp)  # every document once before the next epoch
        # A component that runs out is logged once, however many shards and epochs follow.
        assert sum(f"component {name!r} has given every document" in r.message for r in caplog.records) == 1


def test_stages_switch_the_weights_at_their_step(data):
    spec = {"components": components(data), "stages": [{"start_step": 6, "weights": {"prose": 1}},
                                                       {"start_step": 12, "weights": {"code": 1, "prose": 1}}]}
    _, draws, _ = run_pipeline(config(data, spec, **BYTES, **{"data.seq_len": 256, "data.batch_size": 8}), 18,
                               proxy=None)
    by_step = {}
    for _, _, step, _, name in draws:
        by_step.setdefault(step, []).append(name)
    before = [n for s, ns in by_step.items() if s < 6 for n in ns]
    during = [n for s, ns in by_step.items() if 6 <= s < 12 for n in ns]
    after = [n for s, ns in by_step.items() if s >= 12 for n in ns]
    assert set(during) == {"prose"} and len(during) > 20
    assert before.count("code") > 2 * before.count("prose") > 0
    assert abs(after.count("code") - after.count("prose")) <= 4


def test_a_component_rate_peak_scales_the_schedule(data):
    mix = components(data, 1, 1, extra={"code": {"rate_peak": 0.9}, "prose": {"rate_peak": 0.0}})
    c = config(data, mix, **{"mix.rate_init": 0.9, "mix.rate_peak": 0.9, "mix.rate_final": 0.9,
                             "data.seq_len": 256, "data.batch_size": 8})
    _, draws, _ = run_pipeline(c, 12)
    code = [d[3] for d in draws if d[4] == "code"]
    prose = [d[3] for d in draws if d[4] == "prose"]
    assert set(prose) == {mixing.RAW} and len(prose) > 10
    assert sum(a != mixing.RAW for a in code) > 0.7 * len(code)


def test_resume_on_one_process_after_two_gives_the_same_batches(data, tmp_path):
    from etils import epath

    c = config(data)
    ref, ref_draws, _ = run_pipeline(c, 10, count=1)
    two, draws, its = run_pipeline(c, 4, count=2)
    for a, b in zip(two, ref[:4]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    directory = epath.Path(tmp_path)
    for it in its:
        elastic.write_states(directory, it)
    source = mixture_stream.load_split(c.data, "train")
    one = iter(pipeline.make_pipeline(c, proxy=GzipProxy(), source=source, process_index=0, process_count=1))
    elastic.read_states(directory, one, 0, 1)
    for k in range(4, 10):
        batch = next(one)
        for key in batch:
            np.testing.assert_array_equal(batch[key], ref[k][key], err_msg=f"{key} of batch {k}")
    assert sorted(draws) == sorted(ref_draws[:len(draws)])  # the same documents, steps and arrangements


def test_tokenizer_stream_and_heldout_documents_follow_the_weights(data):
    c = config(data)
    corp = assemble.Corpus(c)
    train_split = corp.split("train")
    docs = list(corp.train_documents()())
    code = {bytes(train_split.components[0][i]) for i in range(len(train_split.components[0]))}
    n_code = sum(d in code for d in docs)
    assert abs(n_code / (len(docs) - n_code) / 3 - 1) < 0.03
    assert code <= set(docs)  # every code document is read at least once
    parts = corp.heldout_parts()
    assert set(parts) == {"code", "prose"} and all(parts.values())
    overall = corp.heldout()
    assert set(overall) <= set(parts["code"]) | set(parts["prose"])
    n_code = sum(d in set(parts["code"]) for d in overall)
    assert n_code == len(parts["code"]) or sum(d in set(parts["prose"]) for d in overall) == len(parts["prose"])
    assert abs(n_code - 0.75 * len(overall)) < 3


# ---- resume checks ----------------------------------------------------------------------------------

def test_resume_refuses_changed_components_and_records_changed_weights(data, tmp_path):
    wd = tmp_path / "run"
    (wd / "checkpoints" / "4").mkdir(parents=True)
    c = config(data)
    mixture.resolve_config(c)
    workdir_lib.save_config(c, str(wd))
    assert workdir_lib.check_resume(config(data), str(wd)) == {}
    changed = workdir_lib.check_resume(config(data, components(data, 1, 1)), str(wd))
    assert list(changed) == ["data.mixture.weights"]
    with pytest.raises(workdir_lib.ConfigMismatchError, match=r"data.mixture.prose.text_field \(saved None, now 'body'\)"):
        workdir_lib.check_resume(config(data, components(data, extra={"prose": {"text_field": "body"}})), str(wd))
    renamed = components(data)
    renamed[1]["name"] = "novels"
    with pytest.raises(workdir_lib.ConfigMismatchError, match=r"data.mixture components \(saved \['code', 'prose'\]"):
        workdir_lib.check_resume(config(data, renamed), str(wd))
    plain = helpers.config_with(**{"data.seq_len": 64, "data.batch_size": 4, "data.virtual_shards": 2})
    with pytest.raises(workdir_lib.ConfigMismatchError, match="data.mixture"):
        workdir_lib.check_resume(plain, str(wd))


# ---- a tiny training run ----------------------------------------------------------------------------

def _run_config(root):
    c = helpers.tiny_run_config(**{"data.val_fraction": 0.1, "train.eval_every": 4, "train.eval_docs": 8,
                                   "train.checkpoint_every": 4, "data.virtual_shards": 2})
    c.data.mixture = components(root)
    return c


def _rows(wd):
    out = {}
    for row in metrics.read_metrics(wd):
        out.setdefault(row["step"], {}).update(row)
    return out


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("full"))
    train.train(_run_config(data), wd, progress=False)
    return wd


def test_a_tiny_run_logs_component_counts_and_scores(full_run):
    rows = _rows(full_run)
    saved = json.load(open(os.path.join(full_run, "config.json")))["data"]["mixture"]
    assert [c["weight"] for c in saved["components"]] == [0.75, 0.25]
    for step in range(8):
        assert rows[step]["data/code/docs"] > rows[step]["data/prose/docs"] > 0
    assert rows[7]["data/code/docs"] >= rows[0]["data/code/docs"]
    for step in (4, 8):
        for key in ("eval/raw_bpb", "eval/code/raw_bpb", "eval/prose/raw_bpb"):
            assert 0 < rows[step][key] < 20, (step, key)
    assert rows[8]["eval/code/raw_bpb"] != rows[8]["eval/prose/raw_bpb"]


def test_a_tiny_run_resumes_exactly_after_sigterm(data, full_run, tmp_path, monkeypatch):
    polls = iter([False] * 3 + [True])  # the poll before step 3 sees the signal: save step 3 and stop
    monkeypatch.setattr(checkpoint.PreemptionGuard, "should_stop", lambda self: next(polls, False))
    wd = str(tmp_path / "run")
    first = train.train(_run_config(data), wd, progress=False)
    assert first["preempted_at"] == 3
    monkeypatch.setattr(checkpoint.PreemptionGuard, "should_stop", lambda self: False)
    second = train.train(_run_config(data), wd, progress=False)
    assert second["start_step"] == 3 and second["final_step"] == 8
    ref, got = _rows(full_run), _rows(wd)
    for step in range(8):
        for key in ("train/loss", "data/code/docs", "data/prose/docs"):
            assert got[step][key] == ref[step][key], (step, key)
    assert got[8]["eval/prose/raw_bpb"] == pytest.approx(ref[8]["eval/prose/raw_bpb"], rel=1e-6)


def test_a_single_source_reader_refuses_a_mixture(data, tmp_path):
    from proxy_jax import assemble as assemble_lib
    from proxy_jax.data import corpus

    c = config(data)
    with pytest.raises(ValueError, match="--config.data.mixture is set"):
        corpus.load_split(c.data, "train")
    with pytest.raises(ValueError, match="--config.data.mixture is set"):  # preprocessing reads one source
        assemble_lib.preprocess(config(data, **{"proxy.name": "gzip"}), str(tmp_path / "shards"))


def test_a_component_that_holds_out_nothing_leaves_the_overall_evaluation_to_the_others(data):
    mix = components(data, extra={"code": {"val_fraction": 0.0}})
    corp = assemble.Corpus(config(data, mix))
    parts = corp.heldout_parts()
    assert parts["code"] == [] and parts["prose"]
    assert corp.heldout() == parts["prose"]
    assert corp.heldout(5) == parts["prose"][:5]


# About a minute on 2 cores: three processes each compile the model.
@pytest.mark.slow
def test_training_on_a_mixture_resumes_on_one_process_after_two(data, tmp_path):
    """jax.distributed on 127.0.0.1 (tests/elastic_worker.py): 2 processes train 2 steps, 1 process resumes
    for 2 more, and every step equals one uninterrupted 1-process run, data/NAME/docs (all processes'
    counts) included."""
    import subprocess
    import sys

    from test_elastic import WORKER, _metrics, _wait
    from test_multihost import free_port

    spec = tmp_path / "mix.json"
    spec.write_text(json.dumps(components(data)))
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(WORKER.parent.parent)}

    def launch(name, workdir, count, stop_after, port=0):
        procs = []
        for p in range(count):
            log = tmp_path / f"{name}{p}.log"
            cmd = [sys.executable, str(WORKER), "--process_id", str(p), "--num_processes", str(count), "--port",
                   str(port), "--workdir", str(workdir), "--stop_after", str(stop_after), "--mixture", str(spec)]
            procs.append((subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                           cwd=WORKER.parent.parent, env=env), log))
        return procs

    ref_dir, wd = tmp_path / "reference", tmp_path / "run"
    _wait(launch("ref", ref_dir, 1, 4) + launch("a", wd, 2, 2, free_port()))
    _wait(launch("b", wd, 1, 2))
    ref, got = _metrics(ref_dir), _metrics(wd)
    assert sorted(got) == sorted(ref) == [0, 1, 2, 3]
    for step in range(4):
        for key in ("data/code/docs", "data/prose/docs", "train/tokens", "train/comp_targets"):
            assert got[step][key] == ref[step][key], (step, key)
        np.testing.assert_allclose(got[step]["train/loss"], ref[step]["train/loss"], rtol=1e-5)
    assert ref[3]["data/code/docs"] > ref[3]["data/prose/docs"] > 0


def test_a_mixture_file_reads_relative_paths_from_its_folder(data, tmp_path):
    folder = tmp_path / "spec"
    folder.mkdir()
    rel = os.path.relpath(data / "prose.jsonl", folder)
    (folder / "mix.yaml").write_text(yaml.safe_dump([
        {"name": "prose", "source": "jsonl", "path": rel, "weight": 1},
        {"name": "ds", "source": "tfds", "path": "my_dataset", "weight": 1}]))
    mix = mixture.resolve(str(folder / "mix.yaml"))
    assert mix["components"][0]["path"] == str(data / "prose.jsonl")
    assert mix["components"][1]["path"] == "my_dataset"
    with pytest.raises(mixture.MixtureError, match="inline JSON that does not parse"):
        mixture.resolve('[{"name": "x",')


def test_evaluate_data_scores_its_own_documents_after_a_mixture_run(data):
    from proxy_jax.evaluation import score

    c = config(data)
    mixture.resolve_config(c)  # as config.json holds it
    single = score.documents_config(c, str(data / "prose.jsonl"))
    assert single.data.mixture == "" and single.data.source == "jsonl"
    docs = assemble.heldout_docs(single, split="train")
    lines = (data / "prose.jsonl").read_text().splitlines()
    assert len(docs) == len(lines) and docs[0] == json.loads((data / "prose.jsonl").read_text().splitlines()[0])["text"].encode()


# 35-50 s on the loaded 2-core machine: each component's worker process starts its own interpreter.
@pytest.mark.slow
def test_batches_do_not_depend_on_the_number_of_worker_processes(data):
    c = config(data, **BYTES, **{"data.seq_len": 128, "data.virtual_shards": 1})
    ref, _, its = run_pipeline(c, 6, proxy=None)
    c.data.num_workers = 2  # one Grain worker process per component
    got, _, more = run_pipeline(c, 6, proxy=None)
    for it in its + more:
        it.close()
    for k, (a, b) in enumerate(zip(got, ref)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of batch {k}")


def test_the_command_refuses_a_bad_mixture_file_in_one_sentence(data, tmp_path):
    from test_cli import TINY, command, one_error

    bad = components(data)
    bad[1]["weight"] = -2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = command("-m", "proxy_jax.main", "--config=configs/proxy_gzip.py:tiny", f"--workdir={tmp_path / 'run'}",
                  f"--config.data.mixture={tmp_path / 'bad.yaml'}", *TINY)
    one_error(out, "data.mixture component 'prose' weight=-2 is negative")
    assert not (tmp_path / "run" / "checkpoints").exists()
