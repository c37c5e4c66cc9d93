"""Checkpoint health and divergence recovery (``proxy_jax.health``, ``train.resume_step``).

The two divergences a user meets: a healthy run resumed with a learning rate of 1e30, and a run started
with it. Each must stop with a message naming a checkpoint from which the original settings train to the
end, bitwise equal to a run that never diverged. Retention keeps healthy checkpoints; the range rule is
checked against a naive implementation written here.
"""

import logging
import math
import os
import re
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from proxy_jax import checkpoint, health, metrics, train, workdir as workdir_lib
from proxy_jax import restore as restore_lib
from test_reliability import diverged, small, steps_on_disk  # noqa: F401 - a fixture


# ---- the normal range ----------------------------------------------------------------------------------

def naive_normal(losses, grads, window, loss_ratio, grad_ratio):
    """Step i is normal when both values are finite and within ratio x the median of the last `window`
    normal steps before it (no history: finite is normal)."""
    out, hist_l, hist_g = [], [], []
    for loss, grad in zip(losses, grads):
        ok = all(math.isfinite(v) for v in (loss, grad))
        if ok and hist_l:
            ok = loss <= loss_ratio * statistics.median(hist_l[-window:]) and \
                grad <= grad_ratio * statistics.median(hist_g[-window:])
        out.append(ok)
        if ok:
            hist_l.append(loss)
            hist_g.append(grad)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_normal_range_matches_a_naive_running_median(seed):
    rng = np.random.default_rng(seed)
    n = 300
    losses = list(np.exp(-np.arange(n) / 100) * 4 + 1 + rng.normal(0, 0.05, n))
    grads = list(np.abs(rng.normal(1.0, 0.3, n)))
    for i in rng.choice(n, 25, replace=False):  # spikes, NaN and inf in either value
        kind = rng.integers(4)
        if kind == 0:
            losses[i] *= 3
        elif kind == 1:
            grads[i] *= 30
        elif kind == 2:
            losses[i] = float("nan")
        else:
            grads[i] = float("inf")
    watch = health.LossWatch(16, 1.5, 10.0)
    got = [watch.observe(i, float(l), float(g))["normal"] for i, (l, g) in enumerate(zip(losses, grads))]
    assert got == naive_normal(losses, grads, 16, 1.5, 10.0)
    assert 0 < sum(not x for x in got) < n  # the spikes are caught, the rest is not
    # A resumed watch seeded with the saved window judges the next steps exactly as the uninterrupted one.
    half = health.LossWatch(16, 1.5, 10.0)
    for i in range(150):
        half.observe(i, float(losses[i]), float(grads[i]))
    resumed = health.LossWatch(16, 1.5, 10.0, recent=half.recent())
    assert [resumed.observe(i, float(losses[i]), float(grads[i]))["normal"] for i in range(150, n)] == got[150:]


def test_a_checkpoint_is_healthy_only_when_the_steps_around_it_are_normal():
    watch = health.LossWatch(8, 1.5, 10.0)
    for step, loss in enumerate([5.0, 4.0, 3.5]):
        watch.observe(step, loss, 1.0)
    record = health.save_record(3, watch, None, final=False)
    assert record["healthy"] is None and record["before"]["step"] == 2  # pending until step 3 is read
    assert health.mark(record, watch.observe(3, 3.4, 1.1))["healthy"] is True
    # The update of step 3 wrecked the model: its own loss looked normal, step 4's gradient is NaN.
    record = health.save_record(4, watch, None, final=False)
    assert health.mark(record, watch.observe(4, 5.77, float("nan")))["healthy"] is False
    # A loss spike before the save also marks it.
    record = health.save_record(5, watch, None, final=True)  # judged on step 4 alone: no step after it
    assert record["healthy"] is False and "normal <=" in health.describe(record)


def test_retention_keeps_the_newest_healthy_checkpoints(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=2, keep_healthy=2, async_save=False)
    marks = {1: True, 2: True, 3: True, 4: False, 5: False, 6: None}
    for step, healthy in marks.items():
        ck.save(step, {"w": jnp.full(4, float(step))}, None, force=True)
        ck.write_health(step, {"step": step, "healthy": healthy})
    # The newest 2 (5, 6) and the newest 2 healthy (2, 3); 1 and 4 are deleted with their records.
    assert ck.steps() == [2, 3, 5, 6]
    assert sorted(os.listdir(tmp_path / "ck.health")) == ["2.json", "3.json", "5.json", "6.json"]
    moved = ck.set_aside([5, 6], "set_aside")
    assert [os.path.basename(m) for m in moved] == ["5", "6"] and ck.steps() == [2, 3]
    assert os.path.exists(tmp_path / "ck.set_aside" / "5" / checkpoint.HEALTH_FILE)
    ck.close()
    assert workdir_lib.checkpoint_health(str(tmp_path), 3) is None  # the workdir layout: checkpoints/
    assert checkpoint.read_health(str(tmp_path / "ck"), 3)["healthy"] is True


# ---- the two divergences, end to end ---------------------------------------------------------------------

def named_step(message: str) -> int:
    m = re.search(r"resume_step=(\d+)", message) or re.search(r"newest checkpoint \(step (\d+)\)", message)
    assert m, message
    return int(m[1])


def params_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


@pytest.fixture(scope="module")
def uninterrupted():
    """The run that never diverged: 10 steps with the preset's learning rate."""
    wd = helpers.shared_folder("test_health/uninterrupted", lambda wd: train.train(
        small(**{"train.steps": 10, "train.checkpoint_every": 1}), wd, progress=False))
    return restore_lib.restore(wd)


@pytest.mark.slow
def test_divergence_from_scratch_names_a_step_that_trains_bitwise_to_the_end(tmp_path, diverged, uninterrupted,
                                                                            caplog):
    wd = helpers.copy_run(diverged[0], tmp_path / "run")  # the run stopped by the non-finite loss (shared)
    step = named_step(diverged[1])
    assert workdir_lib.checkpoint_health(wd, step)["healthy"] is True
    bad = [s for s in steps_on_disk(wd) if s > step]
    assert bad and all(workdir_lib.checkpoint_health(wd, s)["healthy"] is False for s in bad)
    with caplog.at_level(logging.WARNING, logger="proxy_jax.workdir"):  # what evaluate and export print
        restore_lib.restore(wd, bad[0])
    assert [r.message for r in caplog.records if "not marked healthy" in r.message] != []

    again = small(**{"train.steps": 10, "train.checkpoint_every": 1, "train.resume_step": step})
    summary = train.train(again, wd, progress=False)
    assert summary["start_step"] == step and summary["final_step"] == 10
    assert sorted(os.listdir(wd + "/checkpoints.set_aside")) == sorted(str(s) for s in bad)
    assert params_equal(restore_lib.restore(wd), uninterrupted)
    logged = [r["step"] for r in metrics.read_metrics(wd) if "train/loss" in r]
    assert logged == list(range(10))  # the diverged steps' rows are superseded, not duplicated
    # The rollback is applied once: the same command with more steps resumes from the newest checkpoint.
    more = small(**{"train.steps": 11, "train.checkpoint_every": 1, "train.resume_step": step})
    assert train.train(more, wd, progress=False)["start_step"] == 10


@pytest.mark.slow
def test_divergence_after_a_healthy_start_names_a_step_that_trains_to_the_end(tmp_path, uninterrupted):
    wd = str(tmp_path / "run")
    train.train(small(**{"train.steps": 10, "train.checkpoint_every": 3}), wd, progress=False, stop_after=6)
    with pytest.raises(train.NonFiniteLossError) as e:
        train.train(small(**{"train.steps": 10, "train.checkpoint_every": 1, "opt.lr": 1e30}), wd, progress=False)
    step = named_step(str(e.value))
    assert step == 6  # the resumed state; every save after it is of a wrecked model
    original = small(**{"train.steps": 10, "train.checkpoint_every": 3, "train.resume_step": step})
    summary = train.train(original, wd, progress=False)
    assert summary["start_step"] == step and summary["final_step"] == 10
    assert params_equal(restore_lib.restore(wd), uninterrupted)


def test_a_resume_step_that_is_not_on_disk_is_one_sentence(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), async_save=False)
    ck.save(4, {"w": jnp.zeros(2)}, None, force=True)
    with pytest.raises(ValueError, match=r"resume_step=3 names no checkpoint .* holds steps 4"):
        train._roll_back(ck, 3)
    assert train._roll_back(ck, -1) is None and ck.steps() == [4]
    assert train._roll_back(ck, 0) == 0 and ck.steps() == []  # start over: everything set aside
    ck.close()


@pytest.mark.slow
def test_spike_patience_stops_a_finite_divergence_naming_the_newest_healthy_checkpoint(tmp_path, monkeypatch):
    real_limits = health.LossWatch.limits

    def limits(self):  # from the fourth step on every loss is "out of range" (a finite divergence)
        out = real_limits(self)
        return {**out, "loss": 0.0} if len(self.losses) >= 3 else out

    monkeypatch.setattr(health.LossWatch, "limits", limits)
    wd = str(tmp_path / "run")
    config = small(**{"train.steps": 10, "train.checkpoint_every": 1, "train.spike_patience": 2})
    with pytest.raises(train.LossSpikeError, match=r"normal range for 2 steps up to step 4.*resume_step=2 ") as e:
        train.train(config, wd, progress=False)
    assert "\n" not in str(e.value)
    assert [workdir_lib.checkpoint_health(wd, s)["healthy"] for s in (1, 2, 3, 4)] == [True, True, False, False]
