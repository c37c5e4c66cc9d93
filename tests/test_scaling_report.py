"""The sweep report renders from synthetic runs: markdown content, valid PNGs, plot structure."""

import math
import re

import numpy as np
import pytest

from proxy_jax.scaling import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUDGETS = (1e15, 1e16, 1e17, 1e18)
# method -> (E, amplitude at 1e16, alpha): the proxy starts worse and ends better than bytes;
# gzip has only two budgets, so it cannot be fitted.
LAWS = {"bytes": (1.0, 1.5, 0.25), "proxy_tokens": (0.7, 2.0, 0.30)}


def _run(method, size, params, budget, bpb, comp=True):
    steps = 20
    curve = [
        (s, budget * s / steps, 3.0 - 0.05 * s, (2.5 - 0.04 * s) if comp else None, bpb + 0.1 if s == 10 else None)
        for s in range(0, steps + 1, 5)
    ]
    curve[-1] = (*curve[-1][:4], bpb)
    return dict(method=method, size=size, params=params, budget_flops=budget, flops=budget * 1.003,
                steps=steps, symbols=budget / (6 * params), raw_bytes_seen=budget / (6 * params) * 0.4,
                raw_bpb=bpb, wall_s=12.5, curve=curve)


def _results():
    rng = np.random.default_rng(0)
    out = []
    for method, (e, a, alpha) in LAWS.items():
        for budget in BUDGETS:
            law = e + a * (budget / 1e16) ** -alpha
            # bytes also has a larger model at two budgets (2 sizes x 2+ budgets: the N, D fit applies);
            # it is worse there, so the frontier keeps the small one.
            sizes = [("small", 2e7, 0.0)]
            if method == "bytes" and budget in BUDGETS[1:3]:
                sizes.append(("large", 1e8, 0.05))
            for size, params, penalty in sizes:
                bpb = law * math.exp(0.003 * rng.standard_normal()) + penalty
                out.append(_run(method, size, params, budget, bpb, comp=method != "bytes"))
    out += [_run("proxy_gzip", "small", 2e7, b, 3.0 - 0.1 * i) for i, b in enumerate(BUDGETS[:2])]
    return out


def test_report_mentions_every_method_and_links_valid_pngs(tmp_path):
    results = _results()
    path = report.write_report(results, tmp_path / "rep", title="Synthetic sweep", n_boot=20, seed=0)
    text = path.read_text()
    assert path.name == "report.md" and text.startswith("# Synthetic sweep")
    for method in ("bytes", "proxy_tokens", "proxy_gzip"):
        assert f"`{method}`" in text
    runs_table = text.split("## Runs")[1].split("\n## ")[0]
    assert runs_table.count("\n| bytes |") == 6 and runs_table.count("\n| proxy_gzip |") == 2  # a row per run
    assert re.search(r"`proxy_gzip`: not fitted, 2 budget\(s\) measured", text)
    assert re.search(r"`proxy_tokens` \(4 points\): E = [\d.]+ \[[\d.]+, [\d.]+\], A = .*, alpha = ", text)
    # Closed-form crossing of the two laws' noise-free curves, then the reported number must be near it.
    c = np.geomspace(1e15, 1e18, 100001)
    (e1, a1, k1), (e2, a2, k2) = LAWS["proxy_tokens"], LAWS["bytes"]
    true = c[np.argmax(e1 + a1 * (c / 1e16) ** -k1 < e2 + a2 * (c / 1e16) ** -k2)]
    found = float(re.search(r"`proxy_tokens`: goes below `bytes` at ([\d.e+]+) FLOPs", text).group(1))
    assert found == pytest.approx(true, rel=0.5)
    assert "`proxy_gzip`: no fit, so no crossover." in text
    assert "## Fits over parameters and data" in text and "\n| bytes | 6 |" in text  # proxy_tokens: one size
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "scaling.png" in links and len(links) == 1 + len(results)
    for link in links:
        assert "/" not in link  # relative to report.md, as GitHub renders it
        assert (path.parent / link).read_bytes()[:8] == PNG_MAGIC


def test_scaling_plot_has_points_per_method_and_a_curve_per_fit():
    results = _results()
    points = report.frontier(results)
    assert sorted(points) == ["bytes", "proxy_gzip", "proxy_tokens"]
    np.testing.assert_array_equal(points["bytes"][0], np.array(BUDGETS) * 1.003)
    best = {b: min(r["raw_bpb"] for r in results if r["method"] == "bytes" and r["budget_flops"] == b) for b in BUDGETS}
    np.testing.assert_array_equal(points["bytes"][1], [best[b] for b in BUDGETS])
    fits = report.fit_methods(points, n_boot=10, seed=0, level=0.9)
    assert isinstance(fits["proxy_gzip"], str)
    fig = report.plot_scaling(points, fits)
    (ax,) = fig.axes
    assert len(ax.lines) == 3 + 2  # frontier markers for 3 methods, fitted curves for 2
    assert len(ax.collections) == 2  # one bootstrap band per fitted method
    assert ax.get_xscale() == "log"
    curve = next(l for l in ax.lines if l.get_linestyle() == "-")
    assert np.all(np.diff(curve.get_ydata()) < 0)  # fitted loss falls with compute


@pytest.mark.parametrize("method, comp_lines", [("proxy_tokens", 2), ("bytes", 1)])
def test_training_curve_plot_draws_one_line_per_measured_series(method, comp_lines):
    run = _run(method, "small", 2e7, 1e16, 1.5, comp=method != "bytes")
    fig = report.plot_training_curves(run)
    ax_loss, ax_eval = fig.axes[:2]
    assert len(ax_loss.lines) == comp_lines
    np.testing.assert_array_equal(ax_loss.lines[0].get_xdata(), [0, 5, 10, 15, 20])
    (eval_line,) = ax_eval.lines
    np.testing.assert_array_equal(eval_line.get_xdata(), [10, 20])  # only steps with an eval
    np.testing.assert_allclose(eval_line.get_ydata(), [1.6, 1.5])


def test_missing_key_is_named():
    bad = _results()
    del bad[3]["raw_bytes_seen"]
    with pytest.raises(ValueError, match="raw_bytes_seen"):
        report.write_report(bad, "/nonexistent/never-written", title="x")
