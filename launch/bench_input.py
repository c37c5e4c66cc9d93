"""Host/device overlap of the training loop: data wait per step and steps per second, per host prefetch depth.

    python launch/bench_input.py [--config=configs/proxy_gzip.py:tiny] [--steps=60] [--warmup=10]
        [--host_prefetch=0,2] [--workdir=/tmp/proxy_jax_bench_input] [--set data.batch_size=32 ...]

Trains the config from scratch once per depth of ``data.host_prefetch`` (a fresh workdir each, logging every
step, no evaluation, one checkpoint at the end) and reads ``metrics.jsonl``: the data wait of a step is
``perf/data_wait_frac * perf/step_time`` (the time the loop spent in ``next()`` of the input pipeline).
Steps before ``--warmup`` (compilation) are left out of the means. Also prints whether every depth gave
the same losses as the first (they must: prefetching moves work to a thread, never changes a batch).
The command and numbers recorded in BENCHMARKS.md ("Host/device overlap of the training loop") use a
1-layer, d_model 16 model and 256-byte documents, so that packing is a visible share of a CPU step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def run(spec: str, depth: int, steps: int, workdir: str, overrides: dict) -> tuple[list[dict], float]:
    """(metrics rows of the steps, wall seconds of the whole run) of one fresh run with ``depth``."""
    from proxy_jax import metrics, recipes, train

    settings = {"train.steps": steps, "train.log_every": 1, "train.checkpoint_every": steps,
                "train.eval_every": 0, "train.tensorboard": False, "train.sample_prompt": "", **overrides}
    config = recipes.load_config(spec, **settings)
    config.data.host_prefetch = depth
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    train.train(config, workdir, progress=False)
    wall = time.perf_counter() - t0
    rows = [r for r in metrics.read_metrics(workdir) if "perf/step_time" in r]
    return rows, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/proxy_gzip.py:tiny")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--host_prefetch", default="0,2")
    ap.add_argument("--workdir", default="/tmp/proxy_jax_bench_input")
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides, e.g. data.batch_size=32")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: _value(v) for k, v in overrides.items()}
    spec = os.path.join(ROOT, args.config) if not os.path.isabs(args.config) else args.config

    print(f"{args.config} {' '.join(args.set)}: {args.steps} steps, means over steps >= {args.warmup}")
    print(f"{'host_prefetch':>13s} {'data wait/step':>15s} {'step time':>10s} {'steps/s':>8s} "
          f"{'wait frac':>9s} {'run wall':>9s}")
    reference = None
    for depth in [int(d) for d in args.host_prefetch.split(",")]:
        rows, wall = run(spec, depth, args.steps, os.path.join(args.workdir, f"prefetch{depth}"), overrides)
        timed = [r for r in rows if r["step"] >= args.warmup]
        step_time = sum(r["perf/step_time"] for r in timed) / len(timed)
        wait = sum(r["perf/data_wait_frac"] * r["perf/step_time"] for r in timed) / len(timed)
        losses = [r["train/loss"] for r in rows]
        same = "" if reference is None else f"  same losses as host_prefetch={reference[0]}: {losses == reference[1]}"
        reference = reference or (depth, losses)
        print(f"{depth:13d} {wait * 1e3:12.1f} ms {step_time * 1e3:7.1f} ms {1 / step_time:8.2f} "
              f"{wait / step_time:9.3f} {wall:8.1f}s{same}")


if __name__ == "__main__":
    main()
