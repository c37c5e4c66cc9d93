"""Step time between evaluations with and without lm-eval tasks scored while training (``train.lm_eval_tasks``).

    python launch/bench_lm_eval_training.py [--config=configs/bytes.py:tiny] [--steps=60] [--eval_every=20]
        [--warmup=5] [--docs=16] [--workdir=/tmp/proxy_jax_bench_lm_eval] [--set data.batch_size=8 ...]

Writes a corpus of standard-library files and a local ``loglikelihood_rolling`` task over ``--docs`` other
standard-library files (no network), then trains the config from scratch twice in fresh workdirs, logging
every step: without tasks, and with the task scored at every ``--eval_every``. Prints, per run, the median
``perf/step_time`` of the steps that are not the first after an evaluation (which carries the evaluation's
time) nor before ``--warmup`` (compilation), the wall time of the run, and whether both runs gave the same
losses (they must: scoring reads the parameters, it changes nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_input import _value  # noqa: E402 - the script's folder is on sys.path: one parser of KEY=VALUE


def _files(first: int, count: int) -> list[str]:
    paths = sorted(p for p in os.listdir(sysconfig.get_paths()["stdlib"]) if p.endswith(".py"))
    return [os.path.join(sysconfig.get_paths()["stdlib"], p) for p in paths[first:first + count]]


def setup(root: str, docs: int) -> tuple[str, str]:
    """A folder corpus (40 files, 3000 bytes each) and a task folder with ``bench_ppl`` over ``docs`` files."""
    corpus, tasks = os.path.join(root, "corpus"), os.path.join(root, "tasks")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(tasks, exist_ok=True)
    for path in _files(0, 40):
        with open(path, "rb") as f, open(os.path.join(corpus, os.path.basename(path)), "wb") as g:
            g.write(f.read()[:3000])
    data = os.path.join(tasks, "bench_ppl.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for path in _files(100, docs):
            with open(path, encoding="utf-8", errors="replace") as g:
                f.write(json.dumps({"text": g.read()[:2000]}) + "\n")
    task = {"task": "bench_ppl", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}},
            "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "",
            "doc_to_target": "text", "metric_list": [{"metric": "bits_per_byte"}]}
    with open(os.path.join(tasks, "bench_ppl.yaml"), "w", encoding="utf-8") as f:
        json.dump(task, f)
    return corpus, tasks


def run(spec: str, workdir: str, overrides: dict) -> tuple[list[dict], float]:
    from proxy_jax import metrics, recipes, train

    shutil.rmtree(workdir, ignore_errors=True)
    config = recipes.load_config(os.path.join(ROOT, spec) if not os.path.isabs(spec) else spec, **overrides)
    t0 = time.perf_counter()
    train.train(config, workdir, progress=False)
    return metrics.read_metrics(workdir), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/bytes.py:tiny")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval_every", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--workdir", default="/tmp/proxy_jax_bench_lm_eval")
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides KEY=VALUE")
    args = p.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus, tasks = setup(args.workdir, args.docs)
    base = {"train.steps": args.steps, "train.log_every": 1, "train.checkpoint_every": args.steps,
            "train.eval_every": args.eval_every, "train.tensorboard": False, "train.sample_prompt": "",
            "data.source": "dir", "data.path": corpus, "data.val_fraction": 0.2,
            **{k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}}
    results = {}
    for name, extra in (("without tasks", {}), ("with bench_ppl", {"train.lm_eval_tasks": "bench_ppl",
                                                                    "train.lm_eval_include_path": tasks})):
        rows, wall = run(args.config, os.path.join(args.workdir, name.replace(" ", "_")), {**base, **extra})
        train_rows = [r for r in rows if "train/loss" in r]
        times = [r["perf/step_time"] for r in train_rows
                 if r["step"] >= args.warmup and r["step"] % args.eval_every != 0]
        results[name] = [r["train/loss"] for r in train_rows]
        scores = [r for r in rows if "eval/lm_eval/bench_ppl/bits_per_byte" in r]
        print(f"{name}: median step time {1e3 * statistics.median(times):.1f} ms over {len(times)} steps "
              f"(steps >= {args.warmup}, not right after an evaluation); wall {wall:.1f} s; "
              f"{len(scores)} task evaluations", flush=True)
    same = results["without tasks"] == results["with bench_ppl"]
    print(f"same losses with and without tasks: {same}")


if __name__ == "__main__":
    main()
