"""A sweep's runs over seeds: per (method, size, budget) the seed mean and spread, and the frontier.

A sweep may run one (method, size, budget) at several seeds (``seed`` in each result; a result without
it counts as seed 0). :func:`aggregate` groups the runs into :class:`Cell` s: the finite final raw bpb
of each seed, their mean, their sample standard deviation (``ddof=1``, NaN for one seed) and their
range (min, max); a diverged run (raw bpb None, NaN or infinite) is left out of the mean and counted
in ``failed``. :func:`frontier` picks, per method and budget, the size with the lowest seed MEAN (not
the luckiest seed), at the mean FLOPs its seeds spent, and keeps each point's per-seed values for the
seed-aware bootstrap (``fit.bootstrap(per_seed=...)``). The markdown tables of the report live here
too: :func:`mean_table` (every cell) and :func:`best_table` (the frontier, one row per budget).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (method, size, budget) over its seeds, sorted by seed; ``raw_bpb`` and ``flops`` per finite seed."""

    method: str
    size: str
    budget_flops: float
    params: float
    seeds: tuple[int, ...]
    raw_bpb: tuple[float, ...]
    flops: tuple[float, ...]
    failed: int  # runs of this cell whose raw bpb is not a finite number (diverged): not in the mean

    @property
    def n(self) -> int:
        return len(self.raw_bpb)

    @property
    def mean(self) -> float:
        return float(np.mean(self.raw_bpb)) if self.raw_bpb else math.nan

    @property
    def sd(self) -> float:
        """Sample standard deviation over seeds (``ddof=1``); NaN with fewer than 2 seeds."""
        return float(np.std(self.raw_bpb, ddof=1)) if self.n > 1 else math.nan

    @property
    def lo(self) -> float:
        return min(self.raw_bpb) if self.raw_bpb else math.nan

    @property
    def hi(self) -> float:
        return max(self.raw_bpb) if self.raw_bpb else math.nan

    @property
    def mean_flops(self) -> float:
        return float(np.mean(self.flops)) if self.flops else math.nan


@dataclasses.dataclass(frozen=True)
class Frontier:
    """One method's compute-optimal frontier, sorted by ``C``: point i is ``cells[i]``."""

    C: np.ndarray  # [P] mean training FLOPs spent by the chosen size's seeds
    L: np.ndarray  # [P] seed mean of final raw bpb
    per_seed: tuple[np.ndarray, ...]  # [P] each point's raw bpb per seed, by seed
    cells: tuple[Cell, ...]


def aggregate(results: list[dict]) -> list[Cell]:
    """Every (method, size, budget) of ``results`` as a :class:`Cell`, sorted by method, budget, params, size.

    Two runs of one cell with the same seed raise a ``ValueError`` naming both.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["size"], float(r["budget_flops"])), []).append(r)
    cells = []
    for (method, size, budget), runs in groups.items():
        runs = sorted(runs, key=lambda r: int(r.get("seed", 0)))
        for a, b in zip(runs, runs[1:]):
            if int(a.get("seed", 0)) == int(b.get("seed", 0)):
                raise ValueError(
                    f"runs {a.get('name', '?')} and {b.get('name', '?')} are both {method}/{size}/{budget:.2e} "
                    f"seed {int(a.get('seed', 0))}; pass each run once."
                )
        ok = [r for r in runs if _finite(r["raw_bpb"])]
        cells.append(Cell(
            method=method, size=size, budget_flops=budget, params=float(runs[0]["params"]),
            seeds=tuple(int(r.get("seed", 0)) for r in ok), raw_bpb=tuple(float(r["raw_bpb"]) for r in ok),
            flops=tuple(float(r["flops"]) for r in ok), failed=len(runs) - len(ok),
        ))
    return sorted(cells, key=lambda c: (c.method, c.budget_flops, c.params, c.size))


def frontier(results: list[dict]) -> dict[str, Frontier]:
    """Per method: at each budget the cell with the lowest seed-mean raw bpb, at its seeds' mean FLOPs.

    A cell whose every seed diverged is not a point. With one seed per cell this is the best run per
    budget at the FLOPs it spent, as before seeds were aggregated.
    """
    best: dict[str, dict[float, Cell]] = {}
    for cell in aggregate(results):
        if cell.n == 0:
            continue
        per_budget = best.setdefault(cell.method, {})
        if cell.budget_flops not in per_budget or cell.mean < per_budget[cell.budget_flops].mean:
            per_budget[cell.budget_flops] = cell
    out = {}
    for method, per_budget in best.items():
        cells = sorted(per_budget.values(), key=lambda c: c.mean_flops)
        out[method] = Frontier(
            C=np.array([c.mean_flops for c in cells], float), L=np.array([c.mean for c in cells], float),
            per_seed=tuple(np.array(c.raw_bpb, float) for c in cells), cells=tuple(cells),
        )
    return out


def spread_text(cell: Cell) -> str:
    """``mean ± sd`` with 4 decimals, or the one value when a single seed finished."""
    return f"{cell.mean:.4f} ± {cell.sd:.4f}" if cell.n > 1 else f"{cell.mean:.4f}"


def mean_table(cells: list[Cell]) -> list[str]:
    """Markdown: one row per (method, size, budget): seeds, mean FLOPs, mean raw bpb, sd, min, max."""
    lines = [
        "| method | size | budget FLOPs | seeds | mean FLOPs | mean raw bpb | sd | min | max |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        seeds = ", ".join(str(s) for s in c.seeds) or "-"
        if c.failed:
            seeds += f" ({c.failed} diverged)"
        sd = f"{c.sd:.4f}" if c.n > 1 else "-"
        lines.append(
            f"| {c.method} | {c.size} | {c.budget_flops:.2e} | {seeds} | {c.mean_flops:.3e} | {c.mean:.4f} | {sd} | "
            f"{c.lo:.4f} | {c.hi:.4f} |"
        )
    return lines


def best_table(frontiers: dict[str, Frontier]) -> list[str]:
    """Markdown: one row per budget, one column per method: the frontier cell's ``mean ± sd (n, size)``."""
    methods = sorted(frontiers)
    budgets = sorted({c.budget_flops for f in frontiers.values() for c in f.cells})
    lines = ["| budget FLOPs | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for b in budgets:
        row = []
        for m in methods:
            cell = next((c for c in frontiers[m].cells if c.budget_flops == b), None)
            row.append(f"{spread_text(cell)} (n={cell.n}, {cell.size})" if cell else "-")
        lines.append(f"| {b:.2e} | " + " | ".join(row) + " |")
    return lines
