"""Scaling laws fitted to (compute, loss) points: point fits, bootstrap intervals, crossovers.

Laws
- ``L(C) = E + A * C^-alpha`` (:func:`fit_power_law`): loss against training compute.
- ``L(N, D) = E + A * N^-a + B * D^-b`` (:func:`fit_chinchilla`): loss against parameters N and
  training symbols D, for sweeps with several sizes at several budgets.

Fitting rule (the Chinchilla / Epoch recipe): parameters live in log space (``e = log E``,
``a = log A``), the prediction is ``log L_pred = logsumexp(e, a - alpha * log C)`` (each term stays
positive, no overflow), residuals are ``log L_pred - log L`` (relative errors, so small and large
losses weigh alike), the objective is the sum of Huber losses of the residuals with ``delta`` (1e-3:
quadratic for tiny residuals, linear beyond, so one bad run cannot drag the fit), minimised from every
point of a grid of starts; the lowest objective wins. Internally compute is measured relative to the
geometric mean of the data, ``c_ref``, which keeps the amplitude near the data's scale; the reported
``A`` is in the caller's units. Exponents are fitted as ``log alpha`` too, so they are positive by
construction (a law whose loss rises with compute is not a scaling law) and the problem has no
bounds, which keeps scipy on its cheaper unconstrained path.

Bootstrap (:func:`bootstrap`): resample the points with replacement, refit, and take percentile
intervals of E, A, alpha and of predictions. Draws come from ``numpy.random.default_rng(seed)`` in a
fixed order, so the same inputs and seed give the same intervals. Resample i of two methods with the
same number of points, sorted by compute, and the same seed uses the same indices: fits of two methods
measured at the same budgets are then paired by budget, which :func:`crossover` relies on.
With ``per_seed`` (each point's loss per seed, ``L`` their means) the bootstrap has two levels: after
drawing the points as above, each drawn point with several seeds draws its seeds with replacement
(as many as it has) and contributes their mean, so seed noise widens the intervals. These draws come
from ``default_rng((seed, i, j))`` for slot j of resample i, never from the point stream: points with
one seed keep exactly the single-level intervals, and two methods with as many seeds at a paired point
draw the same seed positions.

Errors: fewer points than parameters allow (3 distinct C for a power law, 5 points for the Chinchilla
law), non-finite or non-positive values, mismatched lengths raise one ``ValueError`` sentence.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from scipy import optimize

_SCREEN_NFEV, _MAX_NFEV = 8, 1000


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """``L(C) = E + A * C^-alpha``; ``loss`` is the Huber objective at the optimum."""

    E: float
    A: float
    alpha: float
    loss: float
    n_points: int
    c_ref: float  # geometric mean of the fitted C; A * c_ref^-alpha is the amplitude there

    def predict(self, C) -> np.ndarray:
        logc = np.log(np.asarray(C, dtype=np.float64))
        with np.errstate(divide="ignore"):
            return np.exp(np.logaddexp(np.log(self.E), np.log(self.A) - self.alpha * logc))


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
    """``L(N, D) = E + A * N^-alpha + B * D^-beta``; ``loss`` is the Huber objective at the optimum."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    loss: float
    n_points: int

    def predict(self, N, D) -> np.ndarray:
        logn = np.log(np.asarray(N, dtype=np.float64))
        logd = np.log(np.asarray(D, dtype=np.float64))
        with np.errstate(divide="ignore"):
            terms = np.broadcast_arrays(
                np.log(self.E), np.log(self.A) - self.alpha * logn, np.log(self.B) - self.beta * logd
            )
        return np.exp(np.logaddexp.reduce(np.stack(terms), axis=0))


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Percentile intervals ``(lo, hi)`` at ``level``; ``fits[i]`` is resample i (None if degenerate)."""

    E: tuple[float, float]
    A: tuple[float, float]
    alpha: tuple[float, float]
    level: float
    predict_at: np.ndarray  # [P] compute values
    predict_lo: np.ndarray  # [P]
    predict_hi: np.ndarray  # [P]
    fits: tuple[PowerLawFit | None, ...]


@dataclasses.dataclass(frozen=True)
class Crossover:
    """Compute where curve a goes below curve b, with a paired-bootstrap interval when available.

    ``interval`` is the percentile interval over the bootstrap pairs that cross in range and
    ``crossing_fraction`` the share of usable pairs that do (None without bootstrap fits).
    """

    compute: float
    interval: tuple[float, float] | None = None
    crossing_fraction: float | None = None


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Elementwise Huber loss: ``r^2 / 2`` for ``|r| <= delta``, else ``delta * (|r| - delta / 2)``."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _points(named: dict[str, Sequence[float]], min_points: int) -> list[np.ndarray]:
    arrays = []
    for name, values in named.items():
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"{name} has shape {x.shape}; pass a flat sequence of numbers.")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or infinity ({x.tolist()}); drop the failed runs before fitting.")
        if np.any(x <= 0):
            raise ValueError(f"{name} has non-positive values ({x.tolist()}); scaling laws need positive numbers.")
        arrays.append(x)
    lengths = {len(x) for x in arrays}
    if len(lengths) != 1:
        raise ValueError(
            f"{', '.join(named)} have different lengths {[len(x) for x in arrays]}; pass one value per run."
        )
    if lengths.pop() < min_points:
        raise ValueError(
            f"got {len(arrays[0])} points but this law needs at least {min_points}; add runs at more budgets."
        )
    return arrays


def _solve(residual_and_jac, starts: np.ndarray, delta: float, polish: int = 3):
    """Best (params, objective) over all starts.

    ``least_squares(loss="huber", f_scale=delta)`` minimises exactly the sum of Huber losses of the
    residuals, and its trust-region Gauss-Newton steps use the Jacobian of each residual; a scalar
    quasi-Newton method (L-BFGS-B) on the summed Huber objective stops early here because the objective
    is tiny (~1e-6) and flat, which is the known failure of the original Chinchilla fit. Every start
    gets a short run (``_SCREEN_NFEV`` evaluations); the ``polish`` best are then run to convergence,
    which finds the same optimum as full runs from every start at a fraction of the cost.
    """
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def both(p):
        key = p.tobytes()
        if key not in cache:
            cache.clear()  # least_squares asks for f and J at the same point, one point at a time
            cache[key] = residual_and_jac(p)
        return cache[key]

    def run(x0, max_nfev):
        sol = optimize.least_squares(
            lambda p: both(p)[0], x0, jac=lambda p: both(p)[1], loss="huber", f_scale=delta, method="trf",
            max_nfev=max_nfev,
        )
        obj = float(np.sum(huber(both(sol.x)[0], delta)))
        return sol.x, obj if np.isfinite(obj) else np.inf

    if len(starts) > polish:
        screened = sorted((run(x0, _SCREEN_NFEV) for x0 in starts), key=lambda t: t[1])
        starts = [x for x, _ in screened[:polish]]
    polished = [run(x, _MAX_NFEV) for x in starts]
    return min(polished, key=lambda t: t[1])


def _power_law_problem(logc: np.ndarray, logl: np.ndarray):
    logc_ref = float(np.mean(logc))
    x = logc - logc_ref

    def residual_and_jac(p):
        e, a_ref, g = p  # g = log alpha
        alpha = np.exp(g)
        t = a_ref - alpha * x
        lse = np.logaddexp(e, t)
        w_e, w_a = np.exp(e - lse), np.exp(t - lse)  # d lse / d e, d lse / d a_ref
        return lse - logl, np.stack([w_e, w_a, -w_a * x * alpha], axis=1)

    return residual_and_jac, logc_ref


def _default_power_grid(min_l: float) -> np.ndarray:
    # Starts relative to the data: E a fraction of the best loss, the amplitude at c_ref from small to
    # several times the best loss, exponents from the flat (0.05) to the steep (1.0).
    es = [min_l * f for f in (0.1, 0.5, 0.9)]
    amps = [min_l * f for f in (0.05, 0.5, 3.0)]
    alphas = (0.05, 0.3, 1.0)
    return np.array(list(itertools.product(es, amps, alphas)))


def _grid_to_log(grid, what: str) -> np.ndarray:
    """Starting points (every entry positive) moved to the fit's log space."""
    g = np.asarray(grid, dtype=np.float64)
    width = len(what.split(","))
    if g.ndim != 2 or g.shape[1] != width or len(g) == 0 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError(f"grid has shape {g.shape} or non-positive entries; pass positive {what} starting points.")
    return np.log(g)


def _fit_power_law_logs(logc, logl, starts_log, delta, polish: int = 3) -> PowerLawFit:
    problem, logc_ref = _power_law_problem(logc, logl)
    p, obj = _solve(problem, starts_log, delta, polish)
    e, a_ref, alpha = p[0], p[1], np.exp(p[2])
    return PowerLawFit(
        E=float(np.exp(e)), A=float(np.exp(a_ref + alpha * logc_ref)), alpha=float(alpha), loss=obj,
        n_points=len(logc), c_ref=float(np.exp(logc_ref)),
    )


def fit_power_law(C, L, *, delta: float = 1e-3, grid=None) -> PowerLawFit:
    """Fit ``L(C) = E + A * C^-alpha`` (see the module docstring for the rule).

    ``grid``: starting points ``(E, A_ref, alpha)`` with ``A_ref`` the amplitude at ``c_ref`` (the
    geometric mean of C), i.e. ``A * c_ref^-alpha``; default: 27 starts scaled to the data.
    """
    c, l = _points({"C": C, "L": L}, 3)
    if len(np.unique(c)) < 3:
        raise ValueError(
            f"C has only {len(np.unique(c))} distinct values; a power law needs runs at 3 or more budgets."
        )
    if not delta > 0:
        raise ValueError(f"delta={delta} must be positive; 1e-3 is the usual Huber threshold in log space.")
    starts = _default_power_grid(float(np.min(l))) if grid is None else grid
    starts_log = _grid_to_log(starts, "(E, A_ref, alpha)")
    return _fit_power_law_logs(np.log(c), np.log(l), starts_log, delta)


def _seed_groups(per_seed, l: np.ndarray) -> list[np.ndarray]:
    """Each point's per-seed losses (a point without ``per_seed`` is its one value), checked against ``l``."""
    if per_seed is None:
        return [l[k : k + 1] for k in range(len(l))]
    if len(per_seed) != len(l):
        raise ValueError(f"per_seed has {len(per_seed)} entries for {len(l)} points; pass one list of seeds per point.")
    groups = [_points({f"per_seed[{k}]": g}, 1)[0] for k, g in enumerate(per_seed)]
    bad = [k for k, g in enumerate(groups) if not np.isclose(np.mean(g), l[k], rtol=1e-9, atol=0)]
    if bad:
        raise ValueError(f"L at points {bad} is not the mean of their per_seed values; pass L as the seed means.")
    return groups


def bootstrap(
    C, L, *, n: int = 200, seed: int, level: float = 0.9, predict_at=None, delta: float = 1e-3,
    fit: PowerLawFit | None = None, per_seed: Sequence[Sequence[float]] | None = None,
) -> BootstrapResult:
    """Percentile intervals of E, A, alpha (and of ``L(predict_at)``) from ``n`` resampled refits.

    Each refit starts from the full-data fit (``fit``, computed if not given) only: a resample is the
    same data with some points repeated, so its optimum lies near the full-data one, and where a
    resample leaves the law underdetermined the nearest optimum is the right pick (far starts would
    add spurious spread). A resample with fewer than 3 distinct C values is skipped (its slot in
    ``fits`` is None) so that slots stay aligned across methods for paired comparisons. ``per_seed``:
    one sequence per point of its seeds' losses, whose mean is ``L`` (the module docstring says how
    they are resampled).
    """
    c, l = _points({"C": C, "L": L}, 3)
    groups = _seed_groups(per_seed, l)
    if n < 2 or not 0 < level < 1:
        raise ValueError(f"n={n}, level={level}: use n >= 2 resamples and a level in (0, 1), e.g. 0.9.")
    fit = fit if fit is not None else fit_power_law(c, l, delta=delta)
    logc, logl = np.log(c), np.log(l)
    rng = np.random.default_rng(seed)
    fits: list[PowerLawFit | None] = []
    for i in range(n):
        idx = rng.integers(0, len(c), size=len(c))
        if len(np.unique(c[idx])) < 3:
            fits.append(None)
            continue
        logl_i = logl[idx]
        for j, k in enumerate(idx):
            if len(groups[k]) > 1:  # the second level: this point's seeds, drawn with replacement
                pick = np.random.default_rng((seed, i, j)).integers(0, len(groups[k]), size=len(groups[k]))
                logl_i[j] = np.log(np.mean(groups[k][pick]))
        # (log E, log amplitude at the resample's c_ref, log alpha): the fit's own coordinates.
        start = [[np.log(fit.E), np.log(fit.A) - fit.alpha * np.mean(logc[idx]), np.log(fit.alpha)]]
        fits.append(_fit_power_law_logs(logc[idx], logl_i, np.array(start), delta, polish=1))
    good = [f for f in fits if f is not None]
    if len(good) < 2:
        raise ValueError(f"only {len(good)} of {n} resamples had 3 distinct budgets; add runs at more budgets.")
    q = (50 * (1 - level), 50 * (1 + level))

    def interval(values):
        lo, hi = np.percentile(values, q)
        return float(lo), float(hi)

    at = np.asarray(predict_at if predict_at is not None else np.geomspace(c.min(), c.max(), 50), dtype=np.float64)
    preds = np.stack([f.predict(at) for f in good])
    p_lo, p_hi = np.percentile(preds, q, axis=0)
    return BootstrapResult(
        E=interval([f.E for f in good]), A=interval([f.A for f in good]), alpha=interval([f.alpha for f in good]),
        level=level, predict_at=at, predict_lo=p_lo, predict_hi=p_hi, fits=tuple(fits),
    )


def fit_chinchilla(N, D, L, *, delta: float = 1e-3, grid=None) -> ChinchillaFit:
    """Fit ``L(N, D) = E + A * N^-alpha + B * D^-beta`` (same rule as :func:`fit_power_law`).

    ``grid``: starting points ``(E, A_ref, alpha, B_ref, beta)`` with amplitudes at the geometric means
    of N and D; default: 48 starts scaled to the data.
    """
    n_, d_, l = _points({"N": N, "D": D, "L": L}, 5)
    if len(np.unique(n_)) < 2 or len(np.unique(d_)) < 2:
        raise ValueError("N and D each need at least 2 distinct values; sweep several sizes at several budgets.")
    if not delta > 0:
        raise ValueError(f"delta={delta} must be positive; 1e-3 is the usual Huber threshold in log space.")
    logn, logd, logl = np.log(n_), np.log(d_), np.log(l)
    ln_ref, ld_ref = float(np.mean(logn)), float(np.mean(logd))
    xn, xd = logn - ln_ref, logd - ld_ref

    def residual_and_jac(p):
        e, a_ref, g, b_ref, h = p  # g = log alpha, h = log beta
        alpha, beta = np.exp(g), np.exp(h)
        terms = np.stack([np.full_like(xn, e), a_ref - alpha * xn, b_ref - beta * xd])
        lse = np.logaddexp.reduce(terms, axis=0)
        w = np.exp(terms - lse)
        return lse - logl, np.stack([w[0], w[1], -w[1] * xn * alpha, w[2], -w[2] * xd * beta], axis=1)

    min_l = float(np.min(l))
    if grid is None:
        amps, exps = [min_l * 0.1, min_l], (0.15, 0.6)
        grid = list(itertools.product([min_l * f for f in (0.1, 0.5, 0.9)], amps, exps, amps, exps))
    starts = _grid_to_log(grid, "(E, A_ref, alpha, B_ref, beta)")
    p, obj = _solve(residual_and_jac, starts, delta)
    e, a_ref, alpha, b_ref, beta = p[0], p[1], np.exp(p[2]), p[3], np.exp(p[4])
    return ChinchillaFit(
        E=float(np.exp(e)), A=float(np.exp(a_ref + alpha * ln_ref)), alpha=float(alpha),
        B=float(np.exp(b_ref + beta * ld_ref)), beta=float(beta), loss=obj, n_points=len(l),
    )


def _first_crossing(fit_a: PowerLawFit, fit_b: PowerLawFit, lo: float, hi: float) -> float | None:
    """Smallest C in [lo, hi] where a - b changes from positive to non-positive, else None."""
    logc = np.linspace(np.log(lo), np.log(hi), 2049)
    diff = lambda u: float(fit_a.predict(np.exp(u)) - fit_b.predict(np.exp(u)))  # noqa: E731
    d = fit_a.predict(np.exp(logc)) - fit_b.predict(np.exp(logc))
    # Two laws E + A C^-alpha cross at most twice; the dense grid cannot step over a sign change
    # unless both crossings fall between two neighbouring grid points.
    down = np.nonzero((d[:-1] > 0) & (d[1:] <= 0))[0]
    if len(down) == 0:
        return None
    i = int(down[0])
    if d[i + 1] == 0:
        return float(np.exp(logc[i + 1]))
    return float(np.exp(optimize.brentq(diff, logc[i], logc[i + 1], xtol=1e-12)))


def crossover(
    fit_a: PowerLawFit, fit_b: PowerLawFit, C_range: tuple[float, float], *,
    boot_a: BootstrapResult | None = None, boot_b: BootstrapResult | None = None, level: float = 0.9,
) -> Crossover | None:
    """Compute in ``C_range`` where curve a goes below curve b; None if it does not within the range.

    With ``boot_a`` and ``boot_b`` (same ``n``; pair i is resample i of each, see the module
    docstring), the interval is the percentile interval of the crossings of the pairs that cross.
    A curve already below at the low end of the range does not "go below" inside it: None.
    """
    lo, hi = (float(v) for v in C_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"C_range={C_range}; pass (low, high) with 0 < low < high.")
    point = _first_crossing(fit_a, fit_b, lo, hi)
    if point is None:
        return None
    if boot_a is None or boot_b is None:
        return Crossover(compute=point)
    if len(boot_a.fits) != len(boot_b.fits):
        raise ValueError(
            f"boot_a has {len(boot_a.fits)} resamples and boot_b {len(boot_b.fits)}; bootstrap both with the same n."
        )
    pairs = [(fa, fb) for fa, fb in zip(boot_a.fits, boot_b.fits) if fa is not None and fb is not None]
    crossings = [x for x in (_first_crossing(fa, fb, lo, hi) for fa, fb in pairs) if x is not None]
    if not crossings:
        return Crossover(compute=point, interval=None, crossing_fraction=0.0)
    q_lo, q_hi = np.percentile(np.log(crossings), (50 * (1 - level), 50 * (1 + level)))
    return Crossover(
        compute=point, interval=(float(np.exp(q_lo)), float(np.exp(q_hi))),
        crossing_fraction=len(crossings) / len(pairs),
    )
