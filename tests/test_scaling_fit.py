"""Scaling-law fits, bootstrap intervals, crossovers and compute matching, on synthetic laws.

Tolerances: with 1% multiplicative noise on 12 points over 3 decades of compute the power-law fit
recovers alpha within 10% and E within 15%, and predicts the noise-free law within 2.5% everywhere in
the range, worst at its ends. The amplitude A in raw units is not checked: it moves with alpha as
A_ref * c_ref^alpha.
"""

import numpy as np
import pytest

from proxy_jax.model import ModelArgs
from proxy_jax.scaling import compute, fit

E_TRUE, AREF_TRUE, ALPHA_TRUE, C_PIVOT = 0.8, 2.0, 0.3, 1e16  # L = E + AREF (C / C_PIVOT)^-alpha
C_GRID = np.geomspace(1e15, 1e18, 12)


def _law(c):
    return E_TRUE + AREF_TRUE * (np.asarray(c) / C_PIVOT) ** -ALPHA_TRUE


def _noisy(seed, sigma=0.01, c=C_GRID):
    return _law(c) * np.exp(sigma * np.random.default_rng(seed).standard_normal(len(c)))


def _naive_objective(c, l, e, a, alpha, delta=1e-3):
    """Sum of Huber losses of log-residuals, written out without the library's helpers."""
    total = 0.0
    for ci, li in zip(c, l):
        r = np.log(e + a * ci**-alpha) - np.log(li)
        total += 0.5 * r * r if abs(r) <= delta else delta * (abs(r) - 0.5 * delta)
    return total


def test_noise_free_law_is_recovered_exactly_even_from_far_starts():
    f = fit.fit_power_law(C_GRID, _law(C_GRID), grid=[(0.01, 50.0, 2.0), (3.0, 0.01, 0.01)])
    assert f.E == pytest.approx(E_TRUE, rel=1e-5)
    assert f.alpha == pytest.approx(ALPHA_TRUE, rel=1e-5)
    assert f.A == pytest.approx(AREF_TRUE * C_PIVOT**ALPHA_TRUE, rel=1e-4)
    np.testing.assert_allclose(f.predict(C_GRID), _law(C_GRID), rtol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_noisy_law_is_recovered_within_tolerance(seed):
    l = _noisy(seed)
    f = fit.fit_power_law(C_GRID, l)
    assert abs(f.alpha / ALPHA_TRUE - 1) < 0.10
    assert abs(f.E / E_TRUE - 1) < 0.15
    dense = np.geomspace(C_GRID[0], C_GRID[-1], 100)
    np.testing.assert_allclose(f.predict(dense), _law(dense), rtol=0.025)
    # The optimum is at least as good as the truth under an independently written objective.
    a_true = AREF_TRUE * C_PIVOT**ALPHA_TRUE
    assert f.loss == pytest.approx(_naive_objective(C_GRID, l, f.E, f.A, f.alpha), rel=1e-6)
    assert f.loss <= _naive_objective(C_GRID, l, E_TRUE, a_true, ALPHA_TRUE) + 1e-12


def test_bootstrap_intervals_cover_the_truth_in_most_trials():
    trials, covered_alpha, covered_pred = 20, 0, 0
    at = np.array([3e15, 3e17])
    for t in range(trials):
        b = fit.bootstrap(C_GRID, _noisy(1000 + t), n=20, seed=t, level=0.9, predict_at=at)
        covered_alpha += b.alpha[0] <= ALPHA_TRUE <= b.alpha[1]
        covered_pred += bool(np.all((b.predict_lo <= _law(at)) & (_law(at) <= b.predict_hi)))
    assert covered_alpha >= 14, covered_alpha  # nominal 90%; >= 70% of 20 trials
    assert covered_pred >= 12, covered_pred  # two predictions at once, so a looser floor


def test_bootstrap_is_deterministic_given_the_seed():
    l = _noisy(7)
    one = fit.bootstrap(C_GRID, l, n=8, seed=3)
    two = fit.bootstrap(C_GRID, l, n=8, seed=3)
    other = fit.bootstrap(C_GRID, l, n=8, seed=4)
    assert one.alpha == two.alpha and one.E == two.E
    np.testing.assert_array_equal(one.predict_lo, two.predict_lo)
    assert one.alpha != other.alpha


def test_chinchilla_fit_recovers_both_exponents_on_a_grid():
    n_ = np.repeat(np.geomspace(1e7, 1e9, 4), 4)
    d_ = np.tile(np.geomspace(1e9, 1e11, 4), 4)
    law = 1.69 + 406.4 * n_**-0.34 + 410.7 * d_**-0.28
    exact = fit.fit_chinchilla(n_, d_, law)
    assert (exact.alpha, exact.beta, exact.E) == pytest.approx((0.34, 0.28, 1.69), rel=1e-3)
    noisy = fit.fit_chinchilla(n_, d_, law * np.exp(0.005 * np.random.default_rng(0).standard_normal(16)))
    assert noisy.alpha == pytest.approx(0.34, rel=0.1)
    assert noisy.beta == pytest.approx(0.28, rel=0.1)
    np.testing.assert_allclose(noisy.predict(n_, d_), law, rtol=0.01)


def _pl(e, a, alpha):
    return fit.PowerLawFit(E=e, A=a, alpha=alpha, loss=0.0, n_points=3, c_ref=1.0)


def test_crossover_matches_the_closed_form_and_is_none_out_of_range():
    # Same exponent: E_a + A_a C^-k = E_b + A_b C^-k at C* = ((A_a - A_b) / (E_b - E_a))^(1/k).
    a, b = _pl(0.7, 400.0, 0.2), _pl(0.9, 100.0, 0.2)
    c_star = ((400.0 - 100.0) / (0.9 - 0.7)) ** (1 / 0.2)
    x = fit.crossover(a, b, (c_star / 100, c_star * 100))
    assert x.compute == pytest.approx(c_star, rel=1e-8)
    assert a.predict(c_star / 2) > b.predict(c_star / 2) and a.predict(c_star * 2) < b.predict(c_star * 2)
    assert fit.crossover(a, b, (c_star * 2, c_star * 100)) is None  # already below: no crossing in range
    assert fit.crossover(a, b, (c_star / 100, c_star / 2)) is None  # crosses later than the range
    assert fit.crossover(b, a, (c_star / 100, c_star * 100)) is None  # b goes above a, never below
    assert fit.crossover(_pl(0.5, 1.0, 0.3), _pl(0.9, 1.0, 0.3), (1.0, 1e9)) is None  # never cross


def test_paired_bootstrap_crossover_interval_brackets_the_true_crossing():
    c = np.geomspace(1e15, 1e18, 10)
    law_a = lambda x: 0.70 + 3.0 * (x / C_PIVOT) ** -0.35  # noqa: E731
    law_b = lambda x: 0.85 + 2.0 * (x / C_PIVOT) ** -0.30  # noqa: E731
    rng = np.random.default_rng(5)
    la, lb = (law(c) * np.exp(0.002 * rng.standard_normal(len(c))) for law in (law_a, law_b))
    fa, fb = fit.fit_power_law(c, la), fit.fit_power_law(c, lb)
    ba, bb = fit.bootstrap(c, la, n=20, seed=1, fit=fa), fit.bootstrap(c, lb, n=20, seed=1, fit=fb)
    x = fit.crossover(fa, fb, (c[0], c[-1]), boot_a=ba, boot_b=bb)
    dense = np.geomspace(c[0], c[-1], 200001)
    true = dense[np.argmax(law_a(dense) < law_b(dense))]
    assert x is not None and x.interval[0] <= true <= x.interval[1]
    assert x.compute == pytest.approx(true, rel=0.3)
    assert x.crossing_fraction > 0.8


def _args(d_model, layers, heads, d_ff, vocab, raw_heads):
    padded = -(-vocab // 128) * 128
    return ModelArgs(vocab_size=vocab, padded_vocab_size=padded, num_layers=layers, d_model=d_model,
                     num_heads=heads, num_kv_heads=heads, head_dim=d_model // heads, d_ff=d_ff,
                     num_raw_pred_heads=raw_heads)


def test_compute_matching_spends_equal_flops_across_shapes_and_methods():
    budget, seq_len, batch = 3e15, 1024, 16
    runs = {
        "small bytes": _args(256, 4, 4, 1024, 320, 0),
        "small proxy_tokens": _args(256, 4, 4, 1024, 320 + 16384, 1),
        "wider proxy_neural": _args(512, 6, 8, 2048, 320 + 65536, 1),
    }
    spent = {}
    for name, args in runs.items():
        steps = compute.steps_for_budget(budget, args, seq_len, batch)
        spent[name] = compute.training_flops(args, seq_len, batch, steps)
        per_step = compute.flops_per_step(args, seq_len, batch)
        assert abs(spent[name] - budget) <= per_step / 2 + 1e-6 * budget  # nearest whole step
        assert spent[name] == pytest.approx(budget, rel=0.01), name
    steps_small = compute.steps_for_budget(budget, runs["small bytes"], seq_len, batch)
    steps_wide = compute.steps_for_budget(budget, runs["wider proxy_neural"], seq_len, batch)
    assert steps_small > 5 * steps_wide  # the bigger model gets proportionally fewer steps


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fit.fit_power_law([1e15, 1e16], [3.0, 2.0]), "at least 3"),
        (lambda: fit.fit_power_law([1e15, 1e15, 1e16], [3.0, 2.9, 2.0]), "distinct"),
        (lambda: fit.fit_power_law([1e15, 1e16, -1e17], [3.0, 2.0, 1.5]), "non-positive"),
        (lambda: fit.fit_power_law([1e15, 1e16, 1e17], [3.0, float("nan"), 1.5]), "NaN"),
        (lambda: fit.fit_power_law([1e15, 1e16, 1e17], [3.0, 2.0]), "different lengths"),
        (lambda: fit.fit_chinchilla([1e7] * 4, [1e9, 1e10, 1e11, 1e12], [3, 2.5, 2.2, 2.0]), "at least 5"),
        (lambda: fit.crossover(_pl(1, 1, 0.1), _pl(1, 1, 0.2), (10.0, 1.0)), "C_range"),
        (lambda: compute.steps_for_budget(1e3, _args(256, 4, 4, 1024, 320, 0), 1024, 16), "less than one step"),
        (lambda: compute.steps_for_budget(1e15, _args(256, 4, 4, 1024, 320, 0), 0, 16), "seq_len"),
    ],
)
def test_bad_inputs_raise_one_sentence(call, match):
    with pytest.raises(ValueError, match=match):
        call()
