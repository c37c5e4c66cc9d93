"""Scaling sweeps: bytes vs tokens vs proxies across sizes, one workdir per run, and a results table.

    python launch/sweep.py --root=/tmp/sweep --recipes=bytes,proxy_tokens,proxy_gzip --presets=tiny \
        --seeds=0,1 [--dry_run] [--launcher="launch/gpu.sh"] [-- --config.train.steps=300]
    python launch/sweep.py --root=/tmp/sweep --collect

Runs are sequential on this machine (or handed to --launcher, e.g. a cluster submit wrapper, which gets
CONFIG WORKDIR OVERRIDES...). A finished run is skipped; an interrupted one resumes from its checkpoint.
--collect prints, per run, the step reached, the final training loss, the raw-byte bits per byte on the
held-out split and the symbols seen.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_name(recipe: str, preset: str, seed: int) -> str:
    return f"{recipe}-{preset}-s{seed}"


def last_metrics(workdir: str) -> dict:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    merged: dict = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                merged.update(json.loads(line))
    return merged


def collect(root: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(root)):
        wd = os.path.join(root, name)
        cfg_path = os.path.join(wd, "config.json")
        if not os.path.exists(cfg_path):
            continue
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        m = last_metrics(wd)
        step = int(m.get("step", 0))
        symbols = (step + 1) * cfg["data"]["batch_size"] * cfg["data"]["seq_len"] if m else 0
        rows.append({"run": name, "step": step, "steps": cfg["train"]["steps"],
                     "train/loss": m.get("train/loss"), "eval/raw_bpb": m.get("eval/raw_bpb"),
                     "symbols": symbols})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'run':36s} {'step':>7s} {'loss':>8s} {'raw bpb':>8s} {'symbols':>12s}")
    for r in rows:
        loss = f"{r['train/loss']:.3f}" if isinstance(r["train/loss"], float) else "-"
        bpb = f"{r['eval/raw_bpb']:.3f}" if isinstance(r["eval/raw_bpb"], float) else "-"
        print(f"{r['run']:36s} {r['step']:>7d} {loss:>8s} {bpb:>8s} {r['symbols']:>12,d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder holding one workdir per run")
    p.add_argument("--recipes", default="bytes,proxy_tokens", help="config files in configs/, comma separated")
    p.add_argument("--presets", default="tiny", help="size presets, comma separated")
    p.add_argument("--seeds", default="0", help="seeds, comma separated")
    p.add_argument("--launcher", default="", help="command that receives CONFIG WORKDIR OVERRIDES... "
                   "(default: run python -m proxy_jax.main here)")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    p.add_argument("--collect", action="store_true", help="print the results table and exit")
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    if args.collect:
        print_table(collect(args.root))
        return
    os.makedirs(args.root, exist_ok=True)
    for recipe, preset, seed in itertools.product(args.recipes.split(","), args.presets.split(","),
                                                  [int(s) for s in args.seeds.split(",")]):
        config_file = os.path.join(ROOT, "configs", f"{recipe}.py")
        if not os.path.exists(config_file):
            sys.exit(f"--recipes names {recipe!r} but {config_file} does not exist.")
        workdir = os.path.join(args.root, run_name(recipe, preset, seed))
        run_overrides = [f"--config.seed={seed}", *overrides]
        if args.launcher:
            cmd = [*shlex.split(args.launcher), f"{config_file}:{preset}", workdir, *run_overrides]
        else:
            cmd = [sys.executable, "-m", "proxy_jax.main", f"--config={config_file}:{preset}",
                   f"--workdir={workdir}", *run_overrides]
        done = last_metrics(workdir)
        cfg_path = os.path.join(workdir, "config.json")
        if done and os.path.exists(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                total = json.load(f)["train"]["steps"]
            if int(done.get("step", -1)) >= total - 1:
                print(f"skip (finished): {workdir}")
                continue
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    if not args.dry_run:
        print_table(collect(args.root))


if __name__ == "__main__":
    main()
