"""Reading a sweep's folder: per-run metrics merged by step, results, the status table, the raw-bytes table.

No training code: ``proxy_jax.scaling.sweep`` writes what this reads (``ROOT/RUN/metrics.jsonl``,
``ROOT/RUN/result.json``, ``ROOT/RUN/sweep_wall.json``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

RESULT = "result.json"
WALL = "sweep_wall.json"


def wall(workdir: str) -> float:
    """Seconds the sweep has spent training the run in ``workdir`` (over all its resumptions)."""
    path = os.path.join(workdir, WALL)
    if not os.path.exists(path):
        return 0.0
    with open(path, encoding="utf-8") as f:
        return float(json.load(f)["wall_s"])


def read_rows(workdir: str) -> dict[int, dict]:
    """metrics.jsonl merged by step (a resumed run re-logs steps after its checkpoint: the last wins)."""
    path = os.path.join(workdir, "metrics.jsonl")
    by_step: dict[int, dict] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    by_step.setdefault(int(row["step"]), {}).update(row)
    return by_step


def load_results(root: str) -> list[dict[str, Any]]:
    out = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name, RESULT)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                out.append(json.load(f))
    return out


def status(names: list[str] | None, root: str) -> list[dict[str, Any]]:
    """One row per run (``names``, or every run folder under ``root``): state, step, raw bpb, wall."""
    names = names if names is not None else sorted(
        n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and not n.startswith("_"))
    rows = []
    for name in names:
        wd = os.path.join(root, name)
        res = os.path.join(wd, RESULT)
        if os.path.exists(res):
            r = json.load(open(res, encoding="utf-8"))
            rows.append({"run": name, "state": "done", "step": r["steps"], "steps": r["steps"],
                         "raw_bpb": r["raw_bpb"], "wall_s": r["wall_s"]})
            continue
        by_step = read_rows(wd)
        steps = json.load(open(os.path.join(wd, "config.json")))["train"]["steps"] if os.path.exists(
            os.path.join(wd, "config.json")) else None
        rows.append({"run": name, "state": "started" if by_step else "pending",
                     "step": max(by_step) + 1 if by_step else 0, "steps": steps, "raw_bpb": None,
                     "wall_s": wall(wd) if os.path.isdir(wd) else 0.0})
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'run':44s} {'state':8s} {'step':>11s} {'raw bpb':>8s} {'wall s':>7s}"]
    for r in rows:
        bpb = f"{r['raw_bpb']:.4f}" if isinstance(r["raw_bpb"], float) else "-"
        lines.append(f"{r['run']:44s} {r['state']:8s} {r['step']:>5}/{r['steps'] or '?':<5} {bpb:>8s} "
                     f"{r['wall_s']:>7.0f}")
    done = sum(r["state"] == "done" for r in rows)
    lines.append(f"{done}/{len(rows)} runs done")
    return "\n".join(lines)


def _bpb(r) -> float:
    return float(r["raw_bpb"]) if r and r["raw_bpb"] is not None else math.nan


def _spread(deltas: list[float]) -> list[str]:
    """Three cells for per-seed differences: ``mean ± sd (n)``, ``min .. max``, whether all share a sign."""
    d = np.array([x for x in deltas if math.isfinite(x)])
    if len(d) == 0:
        return ["-", "-", "-"]
    sd = f" ± {np.std(d, ddof=1):.4f}" if len(d) > 1 else ""
    agree = "yes (+)" if np.all(d > 0) else "yes (-)" if np.all(d < 0) else "no"
    return [f"{d.mean():+.4f}{sd} (n={len(d)})", f"{d.min():+.4f} .. {d.max():+.4f}", agree]


def _seed_delta_lines(results, key, controls) -> list[str]:
    """Per (method, size, budget) with several seeds and method other than bytes: the per-seed
    differences (each seed against the same seed's bytes run and control) summarised."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if r["method"] != "bytes":
            groups.setdefault((r["method"], r["size"], r["budget_flops"]), []).append(r)
    rows = []
    for (method, size, budget), runs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        if len(runs) < 2:
            continue
        vs_bytes = [_bpb(r) - _bpb(key.get(("bytes", size, budget, r["seed"]))) for r in runs]
        vs_ctrl = [_bpb(r) - _bpb(controls.get((method, size, budget, r["seed"]))) for r in runs]
        own = [_bpb(r) for r in runs if math.isfinite(_bpb(r))]
        rows.append(" | ".join([
            f"| {method} | {size} | {float(budget):.2e} | {', '.join(str(r['seed']) for r in runs)}",
            f"{np.mean([r['raw_bytes_seen'] for r in runs]):,.0f}",
            f"{np.mean(own):.4f}" if own else "-", *_spread(vs_bytes), *_spread(vs_ctrl)]) + " |")
    if not rows:
        return []
    return ["", "Over seeds: per method, size and budget run at several seeds, the differences of each seed "
            "against the same seed's `bytes` run and its own control: their mean ± sample standard deviation "
            "(ddof=1; n = seeds with a partner), their range, and whether every seed's difference has the same "
            "sign (if not, the difference is within the seed spread).", "",
            "| method | size | budget FLOPs | seeds | mean raw bytes seen | mean raw bpb | Δ vs bytes | range | "
            "same sign | Δ vs its control | range | same sign |",
            "|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|", *rows]


def raw_bytes_lines(results: list[dict[str, Any]]) -> list[str]:
    """The second axis: raw bpb against raw bytes seen, each run beside the bytes run of its size,
    budget and seed (same compute) and, for controls, beside the run they mirror (same raw bytes); then,
    for (method, size, budget) with several seeds, the per-seed differences' mean, spread and sign."""
    key = {(r["method"], r["size"], r["budget_flops"], r["seed"]): r for r in results}
    lines = ["## Equal compute vs equal raw bytes", "",
             "Each run beside the `bytes` run of its size, budget and seed (equal training compute). A `control_*` "
             "run saw the raw bytes of the proxy run it mirrors and nothing else, so proxy minus control is "
             "what the compressed view added.", "",
             "| run | raw bytes seen | raw bpb | bytes run: raw bytes seen | raw bpb | Δ vs bytes | Δ vs its control |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    controls = {(r["control_of"], r["size"], r["budget_flops"], r["seed"]): r for r in results if r.get("control_of")}

    bpb = _bpb

    def delta(x: float) -> str:
        return f"{x:+.4f}" if math.isfinite(x) else "-"

    for r in sorted(results, key=lambda r: (r["budget_flops"], r["size"], r["method"])):
        base = key.get(("bytes", r["size"], r["budget_flops"], r["seed"]))
        ctrl = controls.get((r["method"], r["size"], r["budget_flops"], r["seed"]))
        vs_ctrl = bpb(r) - bpb(ctrl) if ctrl else math.nan
        lines.append(f"| {r['name']} | {r['raw_bytes_seen']:,} | {bpb(r):.4f} | "
                     f"{base['raw_bytes_seen'] if base else 0:,} | {bpb(base):.4f} | {delta(bpb(r) - bpb(base))} | "
                     f"{delta(vs_ctrl)} |")
    return lines + _seed_delta_lines(results, key, controls)
