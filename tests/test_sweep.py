"""Compute-matched sweeps: equal FLOPs per budget, the raw-only transfer control, run / skip / resume / report."""

import json
import os

import grain
import numpy as np
import pytest

from proxy_jax import vocab
from proxy_jax.data import packing
from proxy_jax.data import pipeline
from proxy_jax.proxies.simple import GzipProxy
from proxy_jax.scaling import compute
from proxy_jax.scaling import results as results_lib
from proxy_jax.scaling import sweep as sweep_lib

from helpers import ROOT, config_with, mix_config, stdlib_docs

SIZES = {
    "a": dict(d_model=32, d_ff=64, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=32),
    "b": dict(d_model=64, d_ff=128, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=32),
}
METHODS = {
    "bytes": {"config": os.path.join(ROOT, "configs/bytes.py")},
    "proxy_gzip": {"config": os.path.join(ROOT, "configs/proxy_gzip.py")},
    "proxy_gzip_no_pairing": {"config": os.path.join(ROOT, "configs/proxy_gzip.py"),
                              "overrides": {"mix.mode_warmup": "sentinel"}},
    "control_gzip": {"config": os.path.join(ROOT, "configs/proxy_gzip.py"), "control_of": "proxy_gzip"},
}
OVERRIDES = {"data.seq_len": 64, "data.batch_size": 4, "train.eval_docs": 4, "train.eval_batch_size": 4,
             "data.max_doc_bytes": 512}


def make_sweep(methods, budgets, sizes=("a", "b")):
    return {"preset": "tiny", "overrides": dict(OVERRIDES), "sizes": SIZES, "methods": METHODS, "evals": 2,
            "grids": [{"methods": list(methods), "sizes": list(sizes), "budgets": list(budgets), "seeds": [0]}]}


def test_runs_at_one_budget_spend_equal_flops_and_scale_their_schedule(tmp_path):
    budget = 3e10
    sweep = make_sweep(["bytes", "proxy_gzip", "proxy_gzip_no_pairing"], [budget])
    specs = sweep_lib.runs(sweep)
    assert len(specs) == 6
    steps = set()
    for spec in specs:
        c = sweep_lib.run_config(sweep, spec, str(tmp_path))
        args = sweep_lib.model_args(c)
        flops = compute.training_flops(args, c.data.seq_len, c.data.batch_size, c.train.steps)
        assert abs(flops / budget - 1) < 0.01, spec.name
        steps.add(c.train.steps)
        if spec.method.startswith("proxy"):  # the paper's 20% warm-up, whatever the step count
            assert c.mix.warmup_steps + c.mix.steady_steps == c.train.steps
            assert abs(c.mix.warmup_steps - c.train.steps / 5) <= 1
    assert len(steps) == 4  # bytes (vocab 384) and gzip (640) at two shapes: four step counts


def test_shard_splits_runs_without_overlap():
    specs = sweep_lib.runs(make_sweep(["bytes", "proxy_gzip"], [1e10, 2e10]))
    parts = [sweep_lib.shard(specs, f"{i}/3") for i in range(3)]
    assert sorted(s.name for p in parts for s in p) == sorted(s.name for s in specs)
    assert [s.budget_flops for s in specs] == sorted(s.budget_flops for s in specs)
    with pytest.raises(ValueError, match="i/n"):
        sweep_lib.shard(specs, "3")


def _streams(batches, seq_len):
    """The packed row streams: row r's first seq_len tokens of every batch (the rest is the overlap into the
    same row of the next batch)."""
    rows = batches[0]["tokens"].shape[0]
    return [np.concatenate([b["tokens"][r, :seq_len] for b in batches]) for r in range(rows)]


def _raw_documents(stream):
    """Every raw stream ``12 bytes 13`` in order, as bytes (the trailing unclosed one dropped)."""
    out, i = [], 0
    opens = np.flatnonzero(stream == vocab.RAW_OPEN)
    for o in opens:
        closes = np.flatnonzero(stream[o + 1:] == vocab.RAW_CLOSE)
        if closes.size == 0:
            break
        body = stream[o + 1:o + 1 + closes[0]]
        assert vocab.is_raw_byte(body).all()
        out.append(bytes((body - vocab.BYTE_OFFSET).astype(np.uint8)))
    return out


class _Docs:
    def __init__(self, docs):
        self.docs = docs

    def __len__(self):
        return len(self.docs)

    def __getitem__(self, i):
        return self.docs[i]


def _control_pair(mix_modes):
    source = _Docs([d[:60 + 3 * i] for i, d in enumerate(stdlib_docs(120, 500))])
    over = {"data.seq_len": 64, "data.batch_size": 4, "data.max_doc_bytes": 0, "proxy.name": "gzip",
            "model.num_raw_pred_heads": 1}
    proxy_cfg = config_with(**over)
    proxy_cfg.mix = mix_config(warmup=20, steady=60, rates=(0.3, 0.6, 0.6), modes=mix_modes)
    control_cfg = config_with(**over, **{"data.raw_only_of_mix": True})
    control_cfg.mix = proxy_cfg.mix

    def make(cfg, **kw):
        return pipeline.make_pipeline(cfg, "train", proxy=GzipProxy(), source=source, process_index=0,
                                      process_count=1, **kw)
    return make, proxy_cfg, control_cfg


@pytest.mark.parametrize("modes", [("translation_random", "sentinel", "sentinel"),
                                   ("parallel_comp_first", "sentinel", "sentinel")])
def test_control_sees_the_raw_documents_of_its_proxy_run(modes):
    make, proxy_cfg, control_cfg = _control_pair(modes)
    proxy_draws, control_draws = [], []
    proxy_it = iter(make(proxy_cfg, on_document=lambda **d: proxy_draws.append(d)))
    proxy_batches = [next(proxy_it) for _ in range(80)]
    control_it = iter(make(control_cfg, on_document=lambda **d: control_draws.append(d)))
    control_batches = [next(control_it) for _ in range(25)]
    control_streams = _streams(control_batches, 64)
    assert not any(vocab.is_comp(stream).any() for stream in control_streams)
    assert all(b["num_comp_streams"].sum() == 0 for b in control_batches)
    compared = 0
    for proxy_stream, control_stream in zip(_streams(proxy_batches, 64), control_streams):
        # Each row of the control holds the raw documents of the same row of the proxy run, in order.
        proxy_raw, control_raw = _raw_documents(proxy_stream), _raw_documents(control_stream)
        n = min(len(proxy_raw), len(control_raw))
        assert control_raw[:n] == proxy_raw[:n]
        compared += n
    assert compared > 20
    # Same draws: each document takes the arrangement (and the step's rate and mode) it takes in the proxy run.
    k = min(len(proxy_draws), len(control_draws))
    key = lambda d: (d["index"], d["epoch"], d["step"], d["rate"], d["mode"], d["arrangement"])  # noqa: E731
    assert [key(d) for d in control_draws[:k]] == [key(d) for d in proxy_draws[:k]]
    assert any(d["arrangement"] == "comp" for d in control_draws[:k])  # some documents vanished


def test_control_resumes_exactly_from_its_state():
    make, _, control_cfg = _control_pair(("translation_random", "sentinel", "sentinel"))
    reference = iter(make(control_cfg))
    ref = [next(reference) for _ in range(8)]
    it = iter(make(control_cfg))
    for _ in range(3):
        next(it)
    state = it.get_state()
    resumed = iter(make(control_cfg))
    resumed.set_state(json.loads(json.dumps(state)))
    for k in range(3, 8):
        np.testing.assert_array_equal(next(resumed)["tokens"], ref[k]["tokens"], err_msg=f"batch {k}")


def test_control_of_a_byte_run_is_refused():
    cfg = config_with(**{"proxy.name": "bytes", "data.raw_only_of_mix": True})
    from proxy_jax import config as config_lib

    with pytest.raises(ValueError, match="raw_only_of_mix"):
        config_lib.validate(cfg)
    docs = grain.MapDataset.range(2).map(lambda i: {"flat": i, "index": i, "epoch": 0, "raw": np.zeros(3), "comp": []})
    with pytest.raises(ValueError, match="raw_only"):
        packing.PackedBatchDataset(docs, seq_len=8, num_targets=1, rows=1, seed=0, mix=mix_config(),
                                   has_comp=False, raw_only=True)


@pytest.mark.slow
def test_tiny_sweep_runs_skips_resumes_and_reports(tmp_path):
    root = str(tmp_path / "sweep")
    sweep = make_sweep(["bytes", "proxy_gzip"], [1.5e9])
    sweep["grids"].append({"methods": ["control_gzip"], "sizes": ["a"], "budgets": [1.5e9], "seeds": [0]})
    specs = sweep_lib.runs(sweep)
    assert len(specs) == 5
    # An interrupted run: 2 steps, then the sweep resumes it from its checkpoint.
    first = specs[0]
    assert sweep_lib.run_one(sweep, first, root, stop_after=2) is None
    logs = []
    results = sweep_lib.run_sweep(sweep, root, log=logs.append)
    assert len(results) == 5 and "5/5 runs done" in logs[-1]
    assert "0/5 runs done" in logs[0] and "started" in logs[0]  # the cut run shows in the first table
    by_name = {r["name"]: r for r in results}
    r0 = by_name[first.name]
    assert r0["logged_steps"] == r0["steps"] and r0["raw_bpb"] is not None
    for r in results:
        assert r["raw_bytes_seen"] > 0 and np.isfinite(r["raw_bpb"])
        assert len(r["evals"]) == 2  # one midway, one at the end
    control = by_name["control_gzip-a-1.5e09-s0"]
    proxy = by_name["proxy_gzip-a-1.5e09-s0"]
    # The control sees the proxy run's raw bytes (to within one batch of the stream) and nothing else.
    assert control["comp_symbols_seen"] == 0 and proxy["comp_symbols_seen"] > 0
    assert abs(control["raw_bytes_seen"] - proxy["raw_bytes_seen"]) <= 64 * 4
    # A rerun skips every finished run.
    mtimes = {n: os.path.getmtime(os.path.join(root, n, sweep_lib.RESULT)) for n in by_name}
    logs = []
    sweep_lib.run_sweep(sweep, root, log=logs.append)
    assert not any(line.startswith("train ") for line in logs)
    assert mtimes == {n: os.path.getmtime(os.path.join(root, n, sweep_lib.RESULT)) for n in by_name}
    table = results_lib.format_status(results_lib.status([s.name for s in specs], root))
    assert "5/5 runs done" in table
    path = sweep_lib.report(root)
    text = open(path, encoding="utf-8").read()
    assert "scaling.png" in text and os.path.exists(os.path.join(root, "scaling.png"))
    assert len([f for f in os.listdir(root) if f.startswith("curves_")]) == 5


def test_raw_bytes_table_pairs_runs_with_their_bytes_run_and_control():
    def result(method, bpb, raw, control_of=None):
        return {"name": f"{method}-a", "method": method, "control_of": control_of, "size": "a", "budget_flops": 1e9,
                "seed": 0, "raw_bpb": bpb, "raw_bytes_seen": raw}
    rows = results_lib.raw_bytes_lines([result("bytes", 4.0, 1000), result("proxy_gzip", 5.0, 300),
                                        result("proxy_tokens", 4.5, 250), result("control_tokens", 4.25, 251,
                                                                                 control_of="proxy_tokens")])
    by_run = {line.split(" | ")[0][2:]: line.split(" | ") for line in rows if line.startswith("| ") and "-a" in line}
    assert by_run["proxy_tokens-a"][5:7] == ["+0.5000", "+0.2500 |"]  # vs bytes, vs its own control
    assert by_run["proxy_gzip-a"][5:7] == ["+1.0000", "- |"]  # the tokens control is not gzip's


@pytest.mark.parametrize("preset", ["configs/sweeps/cpu.py", "configs/sweeps/cpu.py:quick", "configs/sweeps/gpu.py"])
def test_shipped_sweeps_expand_to_unique_runs_with_matched_compute(preset, tmp_path):
    """Every run of a shipped preset has its own name, and runs at one budget spend equal FLOPs."""
    sweep = sweep_lib.load_sweep(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), preset))
    specs = sweep_lib.runs(sweep)
    assert len({s.name for s in specs}) == len(specs) > 0
    if preset == "configs/sweeps/cpu.py":
        # 5 methods x 3 sizes at 2 budgets (seed 0) and at 1e12 (seeds 0-2); d64 at 1.25e11 (seed 0) and 2e12
        # (seeds 0-2); 6 ablations and controls; the 16-bit neural proxy at the 3 smallest budgets
        assert len(specs) == 30 + 45 + 5 + 15 + 6 + 7
        assert sweep["m1"] and sweep["preprocess"]["methods"] == ["proxy_neural", "proxy_neural_w8"]
        assert not sweep["skip"]
    for spec in specs:
        if sweep["methods"][spec.method].get("control_of"):
            continue  # its steps follow from its proxy run's batches (test_control_* above)
        c = sweep_lib.run_config(sweep, spec, str(tmp_path))
        flops = compute.training_flops(sweep_lib.model_args(c), c.data.seq_len, c.data.batch_size, c.train.steps)
        # within 1%, or within half a step for the few runs of under 50 steps (the CPU grid's largest model
        # at its smallest budgets: 25-32 steps); the fits use the FLOPs actually spent
        assert abs(flops / spec.budget_flops - 1) <= max(0.01, 0.5 / c.train.steps), (spec.name, c.train.steps)
