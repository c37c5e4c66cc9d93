"""Virtual data shards: the global stream of batches does not depend on the number of processes, and a
run checkpointed on P processes resumes on P' (dividing the number of shards) with identical batches."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from helpers import config_with
from proxy_jax.data import corpus
from proxy_jax.data import elastic
from proxy_jax.data import pipeline
from proxy_jax.proxies.simple import GzipProxy
from test_multihost import free_port

WORKER = pathlib.Path(__file__).with_name("elastic_worker.py")
RTOL = 1e-5


def _config(virtual_shards=4):
    return config_with(**{"data.seq_len": 64, "data.batch_size": 4, "data.max_doc_bytes": 500,
                          "data.virtual_shards": virtual_shards, "mix.warmup_steps": 3, "mix.steady_steps": 4,
                          "mix.decay_steps": 0, "mix.mode_warmup": "parallel_random"})


@pytest.fixture(scope="module")
def source():
    return corpus.load_split(_config().data, "train")


def _hosts(config, source, count, docs=None, host_prefetch=0):
    hook = None if docs is None else (lambda **d: docs.append((d["index"], d["epoch"], d["step"], d["arrangement"])))
    return [iter(pipeline.make_pipeline(config, proxy=GzipProxy(), source=source, process_index=p,
                                        process_count=count, on_document=hook, host_prefetch=host_prefetch))
            for p in range(count)]


def _global(iters, n):
    """``n`` global batches: each process's rows, concatenated in process order."""
    out = []
    for _ in range(n):
        parts = [next(it) for it in iters]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{key} of batch {k}")


def test_global_batches_and_draws_do_not_depend_on_the_process_count(source):
    c = _config()
    ref_docs, ref = [], None
    for count in (1, 2, 4):
        docs = []
        batches = _global(_hosts(c, source, count, docs), 6)
        if ref is None:
            ref, ref_docs = batches, docs
        else:
            _assert_same(batches, ref)
            assert sorted(docs) == sorted(ref_docs)  # same documents, same steps, same arrangements
    assert all(b["tokens"].shape[0] == 4 for b in ref)
    # Process p of 4 owns shard p, which packs documents p, p+4, p+8, ... only.
    for p in range(4):
        docs = []
        it = iter(pipeline.make_pipeline(c, proxy=GzipProxy(), source=source, process_index=p, process_count=4,
                                         on_document=lambda **d: docs.append(d["index"])))
        _global([it], 3)
        assert docs and all(i % 4 == p for i in docs)


@pytest.mark.parametrize("before,after,prefetch", [(2, 1, (0, 0)), (1, 2, (0, 0)), (4, 2, (0, 0)),
                                                    (2, 1, (3, 0)), (1, 4, (2, 1))])
def test_resume_on_another_process_count_continues_exactly(source, tmp_path, before, after, prefetch):
    """``prefetch``: data.host_prefetch before and after (packing runs ahead; the files hold the batches taken)."""
    c = _config()
    ref = _global(_hosts(c, source, 1), 9)
    first = _hosts(c, source, before, host_prefetch=prefetch[0])
    _assert_same(_global(first, 4), ref[:4])
    for it in first:  # each process writes its own shards' files into the shared item directory
        elastic.write_states(tmp_path, it)
        it.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"shard-0000{v}-of-00004.json" for v in range(4)]
    resumed = _hosts(c, source, after, host_prefetch=prefetch[1])
    for p, it in enumerate(resumed):
        elastic.read_states(tmp_path, it, p, after)
    _assert_same(_global(resumed, 5), ref[4:])
    for it in resumed:
        it.close()


def test_resumes_that_cannot_be_honoured_stop_with_one_sentence(source, tmp_path):
    with pytest.raises(elastic.DataLayoutError, match="virtual_shards=4 is not divisible by the 3 processes"):
        _hosts(_config(), source, 3)
    # Saved with the default (one shard per process) on 2 processes, resumed on 1: names the setting.
    two = _hosts(_config(0), source, 2)
    _global(two, 2)
    for it in two:
        elastic.write_states(tmp_path, it)
    one = _hosts(_config(0), source, 1)[0]
    with pytest.raises(elastic.DataLayoutError, match=r"set --config.data.virtual_shards=2"):
        elastic.read_states(tmp_path, one, 0, 1)
    # ... and following the advice continues the stream.
    one = _hosts(_config(2), source, 1)[0]
    elastic.read_states(tmp_path, one, 0, 1)
    _assert_same(_global([one], 2), _global(_hosts(_config(2), source, 1), 4)[2:])


@pytest.mark.parametrize("overrides,count,needle", [
    ({"data.virtual_shards": 3}, 1, "batch_size=4 is not divisible by --config.data.virtual_shards=3"),
    ({"data.virtual_shards": 2}, 4, "virtual_shards=2 is not divisible by the 4 processes"),
    ({"data.virtual_shards": -1}, 1, "virtual_shards=-1"),
])
def test_config_errors(overrides, count, needle):
    from proxy_jax import assemble

    c = config_with(**{"data.batch_size": 4, **overrides})
    with pytest.raises(ValueError, match=needle):
        assemble.validate(c, num_devices=count, process_count=count)


def _launch(tmp_path, name, workdir, count, stop_after, port=0, virtual_shards=4):
    # This checkout's package, whatever copy is installed.
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(WORKER.parent.parent)}
    procs = []
    for p in range(count):
        log = open(tmp_path / f"{name}{p}.log", "w")
        cmd = [sys.executable, str(WORKER), "--process_id", str(p), "--num_processes", str(count),
               "--port", str(port), "--workdir", str(workdir), "--stop_after", str(stop_after),
               "--virtual_shards", str(virtual_shards)]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=WORKER.parent.parent,
                                       env=env),
                      tmp_path / f"{name}{p}.log"))
    return procs


def _wait(procs):
    try:
        for proc, log in procs:
            assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()


def _metrics(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "train/loss" in r}


# About a minute on 2 cores: seven processes each compile the model.
@pytest.mark.slow
def test_training_resumes_on_another_process_count(tmp_path):
    """2 processes -> 1 and 1 -> 2 (jax.distributed on 127.0.0.1) train exactly like one uninterrupted run."""
    ref_dir = tmp_path / "reference"
    runs = {"two_to_one": (2, 1), "one_to_two": (1, 2)}
    first = _launch(tmp_path, "ref", ref_dir, 1, 4)
    for name, (before, _) in runs.items():
        first += _launch(tmp_path, f"{name}_a", tmp_path / name, before, 2, free_port())
    _wait(first)
    second = []
    for name, (_, after) in runs.items():
        second += _launch(tmp_path, f"{name}_b", tmp_path / name, after, 2, free_port())
    _wait(second)
    ref = _metrics(ref_dir)
    assert sorted(ref) == [0, 1, 2, 3]
    for name in runs:
        workdir = tmp_path / name
        assert (workdir / "checkpoints" / "2" / "data").is_dir()
        got = _metrics(workdir)
        assert sorted(got) == [0, 1, 2, 3], name
        for step in range(4):
            # (train/num_streams is summed over this host's rows only, so it is left out.)
            for key in ("train/tokens", "train/raw_targets", "train/comp_targets"):
                assert got[step][key] == ref[step][key], (name, step, key)
            for key in ("train/loss", "train/grad_norm"):
                np.testing.assert_allclose(got[step][key], ref[step][key], rtol=RTOL, err_msg=f"{name} {step} {key}")


@pytest.mark.slow
def test_a_default_started_run_resumes_on_fewer_processes(tmp_path):
    """data.virtual_shards left at 0: a run started on 2 processes records 2 shards in config.json and
    resumes on 1 process with the default, exactly like an uninterrupted run of those 2 shards."""
    ref_dir, wd = tmp_path / "reference", tmp_path / "run"
    first = _launch(tmp_path, "ref", ref_dir, 1, 4, virtual_shards=2)
    first += _launch(tmp_path, "a", wd, 2, 2, free_port(), virtual_shards=0)
    _wait(first)
    assert json.loads((wd / "config.json").read_text())["data"]["virtual_shards"] == 2
    _wait(_launch(tmp_path, "b", wd, 1, 2, virtual_shards=0))
    ref, got = _metrics(ref_dir), _metrics(wd)
    assert sorted(got) == sorted(ref) == [0, 1, 2, 3]
    for step in range(4):
        for key in ("train/loss", "train/grad_norm"):
            np.testing.assert_allclose(got[step][key], ref[step][key], rtol=RTOL, err_msg=f"{step} {key}")
