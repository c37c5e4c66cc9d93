"""The sweep report: one markdown file plus PNG plots, from a list of finished runs.

Input: one dict per run with at least ``method`` (e.g. "bytes", "proxy_tokens"), ``size`` (preset
name), ``params``, ``budget_flops`` (the budget asked for), ``flops`` (training FLOPs spent), ``steps``,
``symbols`` (positions trained on), ``raw_bytes_seen``, ``raw_bpb`` (final raw-byte bits per byte),
``seed`` (optional: 0 if absent), ``wall_s`` and ``curve``: a list of ``(step, flops, train_loss_raw, train_loss_comp,
eval_raw_bpb)`` tuples, any of the last three None (or NaN) where not measured.

Output, in ``out_dir``: ``report.md`` (readable on GitHub: relative image links) with
- a table of the runs (one row per run and seed);
- a table of each (method, size, budget) over its seeds: the seeds, mean FLOPs, mean raw bpb, sample
  standard deviation (ddof=1) and min / max (``proxy_jax.scaling.seeds``);
- the best size per budget and method by seed mean, as ``mean ± sd (n seeds, size)``;
- per method, a fit ``raw_bpb = E + A * C^-alpha`` over the method's compute-optimal frontier (at
  each budget the size with the lowest seed-mean raw bpb, at its seeds' mean FLOPs) with bootstrap
  intervals (two-level where a point has several seeds: see ``fit.bootstrap``), or a sentence when
  the method has fewer than 3 budgets;
- per method with several sizes at several budgets, the fit ``E + A N^-alpha + B D^-beta`` over all
  its runs (N parameters, D symbols);
- for every other method, the compute at which its curve goes below the ``bytes`` curve inside the
  compute range both methods measured, with a paired-bootstrap interval, or a sentence saying it
  does not;
- ``scaling.png`` (raw bpb vs compute, log x: the frontier's seed means, with a bar from the lowest
  to the highest seed where a point has several, fitted curves and bootstrap bands) and one
  ``curves_*.png`` per run (raw and compressed training loss vs step; eval raw bpb vs step), named
  with ``_s<seed>`` when the sweep has seeds other than 0.
Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so
rendering changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import math
import pathlib
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from proxy_jax.scaling import fit as fit_lib
from proxy_jax.scaling import seeds as seeds_lib

BASELINE = "bytes"
REQUIRED_KEYS = (
    "method", "size", "params", "budget_flops", "flops", "steps", "symbols", "raw_bytes_seen", "raw_bpb",
    "wall_s", "curve",
)


def _check(results: list[dict]) -> None:
    if not results:
        raise ValueError("results is empty; pass one dict per finished run.")
    for i, r in enumerate(results):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"run {i} ({r.get('method', '?')}/{r.get('size', '?')}) lacks {missing}; add them.")
        for row in r["curve"]:
            if len(row) != 5:
                raise ValueError(
                    f"run {i} has a curve row {row!r}; rows are (step, flops, loss_raw, loss_comp, eval_raw_bpb)."
                )


def _num(v) -> float:
    return math.nan if v is None else float(v)


def frontier(results: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, ``(C, L)`` sorted by C: at each budget the size with the lowest seed-mean final raw
    bpb, at its seeds' mean FLOPs (``seeds.frontier``, which also keeps the per-seed values)."""
    return {m: (f.C, f.L) for m, f in seeds_lib.frontier(results).items()}


def fit_methods(points, *, n_boot: int, seed: int, level: float, per_seed=None):
    """Per method ``(PowerLawFit, BootstrapResult)``, or the reason it cannot be fitted (a string).

    Every method is bootstrapped with the same seed and ``n_boot``, so resample i draws the same
    indices for methods measured at the same number of budgets: the pairing :func:`fit.crossover` uses.
    ``per_seed``: per method, each point's raw bpb per seed (``seeds.Frontier.per_seed``); a method
    without it is bootstrapped over its points only.
    """
    fits = {}
    for method, (c, l) in points.items():
        if len(np.unique(c)) < 3:
            fits[method] = f"{len(np.unique(c))} budget(s) measured; a fit needs at least 3."
            continue
        point = fit_lib.fit_power_law(c, l)
        at = np.geomspace(c.min(), c.max(), 64)
        groups = (per_seed or {}).get(method)
        fits[method] = (point, fit_lib.bootstrap(c, l, n=n_boot, seed=seed, level=level, predict_at=at, fit=point,
                                                 per_seed=groups))
    return fits


def plot_scaling(points, fits, frontiers=None) -> Figure:
    """Raw bpb vs training compute (log x): per method its frontier points (one line of markers: seed
    means) and, when fitted, the fitted curve (one line) over a bootstrap band (one filled area). With
    ``frontiers`` (``seeds.frontier``), the points with several seeds get a vertical bar from their
    lowest to their highest seed (one error-bar container per method that has such points)."""
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (method, (c, l)) in enumerate(sorted(points.items())):
        color = f"C{i}"
        ax.plot(c, l, "o", color=color, label=method)
        fr = (frontiers or {}).get(method)
        multi = [k for k, cell in enumerate(fr.cells) if cell.n > 1] if fr is not None else []
        if multi:
            mean = np.array([fr.cells[k].mean for k in multi])
            err = [mean - [fr.cells[k].lo for k in multi], [fr.cells[k].hi for k in multi] - mean]
            ax.errorbar(fr.C[multi], mean, yerr=err, fmt="none", ecolor=color, elinewidth=1, capsize=3)
        f = fits.get(method)
        if isinstance(f, tuple):
            point, boot = f
            ax.plot(boot.predict_at, point.predict(boot.predict_at), "-", color=color,
                    label=f"{method}: {point.E:.3g} + A C^-{point.alpha:.3g}")
            ax.fill_between(boot.predict_at, boot.predict_lo, boot.predict_hi, color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("raw bits per byte")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.96)
    return fig


def plot_training_curves(result: dict) -> Figure:
    """Left: training loss on raw and on compressed positions vs step (one line each, where measured);
    right: eval raw bpb vs step (one line, where measured)."""
    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax_loss, ax_eval = fig.subplots(1, 2)
    rows = np.array([[_num(v) for v in row] for row in result["curve"]], float).reshape(-1, 5)
    step = rows[:, 0]
    for col, label in ((2, "train loss, raw"), (3, "train loss, compressed")):
        ok = np.isfinite(rows[:, col])
        if ok.any():
            ax_loss.plot(step[ok], rows[ok, col], label=label)
    ok = np.isfinite(rows[:, 4])
    if ok.any():
        ax_eval.plot(step[ok], rows[ok, 4], "o-", label="eval raw bpb")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("nats per target")
    ax_eval.set_xlabel("step")
    ax_eval.set_ylabel("raw bits per byte")
    for ax in (ax_loss, ax_eval):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    seed = f" / seed {int(result['seed'])}" if "seed" in result else ""
    fig.suptitle(f"{result['method']} / {result['size']} / {float(result['budget_flops']):.2e} FLOPs{seed}",
                 fontsize=10)
    # Fixed margins: tight_layout costs more than drawing the figure, once per run of a sweep.
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.88, wspace=0.3)
    return fig


def _interval(v: float, iv: tuple[float, float]) -> str:
    return f"{v:.4g} [{iv[0]:.4g}, {iv[1]:.4g}]"


def _run_order(r: dict):
    return r["method"], float(r["budget_flops"]), float(r["params"]), int(r.get("seed", 0))


def _runs_table(results: list[dict]) -> list[str]:
    lines = [
        "| method | size | seed | params | budget FLOPs | FLOPs | steps | symbols | raw bytes seen | raw bpb "
        "| wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=_run_order):
        lines.append(
            f"| {r['method']} | {r['size']} | {int(r.get('seed', 0))} | {float(r['params']):.3g} | "
            f"{float(r['budget_flops']):.2e} | "
            f"{float(r['flops']):.3e} | {int(r['steps'])} | {float(r['symbols']):.3g} | "
            f"{float(r['raw_bytes_seen']):.3g} | {_num(r['raw_bpb']):.4f} | {float(r['wall_s']):.0f} |"
        )
    return lines


def _chinchilla_lines(results: list[dict]) -> list[str]:
    lines = []
    for method in sorted({r["method"] for r in results}):
        runs = [r for r in results if r["method"] == method and math.isfinite(_num(r["raw_bpb"]))]
        sizes, budgets = {r["params"] for r in runs}, {r["budget_flops"] for r in runs}
        if len(sizes) < 2 or len(budgets) < 2 or len(runs) < 5:
            continue
        f = fit_lib.fit_chinchilla([r["params"] for r in runs], [r["symbols"] for r in runs],
                                   [r["raw_bpb"] for r in runs])
        lines.append(f"| {method} | {len(runs)} | {f.E:.4g} | {f.A:.4g} | {f.alpha:.4g} | {f.B:.4g} | {f.beta:.4g} |")
    if not lines:
        return []
    return [
        "## Fits over parameters and data", "",
        "`raw_bpb = E + A N^-alpha + B D^-beta` over every run of a method, each seed its own point (N parameters, "
        "D symbols trained on).", "",
        "| method | runs | E | A | alpha | B | beta |", "|---|---:|---:|---:|---:|---:|---:|", *lines, "",
    ]


def _crossover_lines(points, fits, level: float) -> list[str]:
    if not isinstance(fits.get(BASELINE), tuple):
        return [f"No crossover computed: the `{BASELINE}` baseline has no fit."]
    base_point, base_boot = fits[BASELINE]
    lines = []
    for method in sorted(m for m in fits if m != BASELINE):
        if not isinstance(fits[method], tuple):
            lines.append(f"- `{method}`: no fit, so no crossover.")
            continue
        point, boot = fits[method]
        lo = max(points[method][0].min(), points[BASELINE][0].min())
        hi = min(points[method][0].max(), points[BASELINE][0].max())
        if not lo < hi:
            lines.append(f"- `{method}`: its compute range does not overlap `{BASELINE}`'s, so no crossover.")
            continue
        x = fit_lib.crossover(point, base_point, (lo, hi), boot_a=boot, boot_b=base_boot, level=level)
        if x is None:
            where = "below" if point.predict(lo) < base_point.predict(lo) else "above"
            lines.append(f"- `{method}`: no crossing between {lo:.2e} and {hi:.2e} FLOPs: its fit stays {where} "
                         f"`{BASELINE}`'s over the whole range.")
            continue
        text = f"- `{method}`: goes below `{BASELINE}` at {x.compute:.3e} FLOPs"
        if x.interval is not None:
            text += (f" ({level:.0%} interval {x.interval[0]:.3e} .. {x.interval[1]:.3e}; "
                     f"{x.crossing_fraction:.0%} of bootstrap pairs cross in range)")
        lines.append(text + ".")
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def write_report(
    results: list[dict], out_dir, *, title: str, n_boot: int = 200, seed: int = 0, level: float = 0.9,
) -> pathlib.Path:
    """Write ``report.md`` and its PNGs into ``out_dir`` (created if missing); returns report.md's path."""
    _check(results)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frontiers = seeds_lib.frontier(results)
    points = {m: (f.C, f.L) for m, f in frontiers.items()}
    fits = fit_methods(points, n_boot=n_boot, seed=seed, level=level,
                       per_seed={m: f.per_seed for m, f in frontiers.items()})
    cells = seeds_lib.aggregate(results)
    multi_seed = any(c.n > 1 for c in cells)

    md = [f"# {title}", "", f"{len(results)} runs, methods: {', '.join(sorted({r['method'] for r in results}))}.", ""]
    md += ["## Runs", "", *_runs_table(results), ""]
    md += [
        "## Mean and spread over seeds", "",
        "Per method, size and budget: the seeds that finished, the mean training FLOPs they spent, the mean "
        "of their final raw bpb, its sample standard deviation (ddof=1; `-` for one seed) and the lowest and "
        "highest seed. A diverged seed is listed and left out of the mean.", "",
        *seeds_lib.mean_table(cells), "",
        "## Best size per budget", "",
        "Per method and budget, the size with the lowest mean raw bpb over its seeds: mean ± sample standard "
        "deviation (n seeds, size); these are the points the fits below use.", "",
        *seeds_lib.best_table(frontiers), "",
    ]
    md += [
        "## Raw bits per byte vs training compute", "",
        f"`raw_bpb = E + A C^-alpha` over each method's best size per budget by seed-mean raw bpb (C = the "
        f"mean training FLOPs its seeds spent); Huber loss on log residuals; brackets: {level:.0%} bootstrap "
        f"intervals ({n_boot} resamples, seed {seed}): each resample draws the budgets with replacement and, "
        f"at a budget with several seeds, that budget's seeds with replacement (their mean is the point), so "
        f"the intervals carry seed noise; a budget with one seed is its one value."
        + (" In the plot a bar spans a point's lowest to highest seed." if multi_seed else ""), "",
    ]
    for method in sorted(fits):
        f = fits[method]
        if isinstance(f, str):
            md.append(f"- `{method}`: not fitted, {f}")
        else:
            point, boot = f
            md.append(
                f"- `{method}` ({point.n_points} points): E = {_interval(point.E, boot.E)}, "
                f"A = {_interval(point.A, boot.A)}, alpha = {_interval(point.alpha, boot.alpha)}"
                + (f"; seeds per point {', '.join(str(c.n) for c in frontiers[method].cells)}" if multi_seed else "")
                # Three parameters through three budgets: every usable resample is the same budgets, so
                # only the seed level (if any) moves the fit.
                + ((" (3 budgets: the law passes through them, so the intervals show only the seed noise)"
                    if any(c.n > 1 for c in frontiers[method].cells) else
                    " (3 budgets: the law passes through them, so the intervals say nothing)")
                   if len(np.unique(points[method][0])) == 3 else "")
            )
    fig = plot_scaling(points, fits, frontiers)
    fig.savefig(out / "scaling.png", dpi=120)
    md += ["", "![raw bpb vs compute](scaling.png)", ""]
    md += [f"## Crossover with `{BASELINE}`", "", *_crossover_lines(points, fits, level), ""]
    md += _chinchilla_lines(results)

    md += ["## Training curves", ""]
    used: set[str] = set()
    seeded = any(int(r.get("seed", 0)) != 0 for r in results)
    for r in sorted(results, key=_run_order):
        tag = f"_s{int(r.get('seed', 0))}" if seeded else ""
        name = _slug(f"curves_{r['method']}_{r['size']}_{float(r['budget_flops']):.2e}{tag}")
        while name in used:
            name += "_"
        used.add(name)
        plot_training_curves(r).savefig(out / f"{name}.png", dpi=90)
        heading = f"### {r['method']} / {r['size']} / {float(r['budget_flops']):.2e} FLOPs"
        heading += f" / seed {int(r.get('seed', 0))}" if seeded else ""
        md += [heading, "", f"![{name}]({name}.png)", ""]

    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
