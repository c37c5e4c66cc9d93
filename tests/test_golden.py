"""Pinned numbers: the first optimiser step of a tiny byte run and a tiny proxy run, from a fixed seed.

If one of these fails, something changed what a run computes for the same config and seed: the batches
(mixing, packing, the corpus split), the initialisation, the model, the loss or the optimiser. That may be
intended (then update the numbers here and say why in the commit), but it is never a side effect of a
refactor: resumed and fresh runs, and results across versions, are only comparable while these hold.
"""

import jax
import numpy as np
import pytest

import helpers
from proxy_jax import assemble, metrics, sharding

# (spec, loss after step 0, gradient norm of step 0), measured on this CPU build of XLA.
GOLDEN = {
    "bytes": ("configs/bytes.py:tiny", 5.785247325897217, 0.9766075611114502),
    "proxy_gzip": ("configs/proxy_gzip.py:tiny", 6.145132064819336, 0.5819680690765381),
}
RTOL = 1e-4  # float32 on XLA's CPU backend: reduction order may differ between CPU generations, not more


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_first_step_metrics_are_pinned(name, tmp_path):
    spec, loss, grad_norm = GOLDEN[name]
    run = assemble.build(helpers.tiny_run_config(spec), str(tmp_path))
    it = iter(run.pipeline)
    try:
        batch = next(it)
    finally:
        it.close()
    _, out = run.train_step(run.state, sharding.host_to_global(batch, run.mesh))
    got = metrics.to_python(out)
    np.testing.assert_allclose([got["loss"], got["grad_norm"]], [loss, grad_norm], rtol=RTOL,
                               err_msg=f"{name}: what a run computes changed (see the module docstring); now "
                                       f"loss {got['loss']!r}, grad_norm {got['grad_norm']!r}")


def test_training_steps_move_no_array_implicitly(tmp_path):
    """The loop's per-step path (batch to the mesh, train step, reading its metrics) and held-out scoring
    transfer between host and device only explicitly (``jax_transfer_guard``): a silent transfer inside the
    loop would stall the device on every step of a large run."""
    from proxy_jax.evaluation import bpb

    config = helpers.tiny_run_config(**{"train.eval_window": 64})
    run = assemble.build(config, str(tmp_path))
    docs = [d[:500] for d in run.corpus.heldout(2)]
    it, state, losses = iter(run.pipeline), run.state, []
    try:
        with jax.transfer_guard("disallow"):
            for _ in range(3):
                state, out = run.train_step(state, sharding.host_to_global(next(it), run.mesh))
                losses.append(metrics.to_python(out)["loss"])
            scores = bpb.model_bpb(run.eval_step, state.params, run.mesh, docs, config=run.config,
                                   fmt=run.record.text_format, proxy=run.proxy, progress=False)
    finally:
        it.close()
    assert np.all(np.isfinite(losses)) and np.isfinite(scores["raw_bpb"])
