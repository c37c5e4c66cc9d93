"""The Colab quickstart runs headless, end to end, so it cannot rot.

It runs with a mixing warm-up that starts at rate 0, so its first logged steps have no compressed targets
(and log no compressed loss): the plot must draw those as gaps rather than fail on the missing key.
"""

import json
import os
import re

import pytest

from proxy_jax import metrics, recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
OVERRIDES = {"mix.rate_init": 0.0, "train.log_every": 1}


@pytest.mark.slow
def test_quickstart_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PROXY_JAX_NOTEBOOK_STEPS", str(STEPS))
    monkeypatch.setenv("PROXY_JAX_NOTEBOOK_EVAL_DOCS", "10")
    monkeypatch.setenv("PROXY_JAX_NOTEBOOK_OVERRIDES", json.dumps(OVERRIDES))
    nb = nbformat.read(os.path.join(ROOT, "colab", "quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "raw bits/byte on 10 held-out files" in text
    assert "def fibonacci(n):" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the loss plot should be rendered"

    workdir = re.search(r"workdir: (\S+)", text).group(1)
    rows = [r for r in metrics.read_metrics(workdir) if "train/loss" in r]
    assert len(rows) == STEPS  # log_every=1
    assert any("train/comp_loss" not in r for r in rows), "no logged step lacks compressed targets"
    assert any("train/comp_loss" in r for r in rows)
    assert all("train/comp_loss" in r for r in rows if r.get("train/comp_targets", 0) > 0)
    # The run trained the schedule that --config.train.steps gives the recipe (rescaled once, not twice).
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)["mix"]
    want = recipes.load_config(os.path.join(ROOT, "configs", "proxy_tokens.py:tiny"),
                               **{"train.steps": STEPS, **OVERRIDES}).mix.to_dict()
    assert {k: saved[k] for k in want} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in want.items()}
