"""Run safety: every accident a user can cause ends in one sentence, and never loses or mixes a run's state.

Covered: a save of a step already on disk (SIGTERM at a checkpoint step, re-trained fall-back steps),
damaged checkpoints (one, or all of them), a non-finite loss (only finite states are saved), two
processes on one workdir (the lock), a resume with changed settings, a full disk during a save (an
``OSError(ENOSPC)`` raised by the iterator write inside Orbax's temporary directory), config-file
mistakes, evaluation with no documents or a window too large for memory, and the report of skipped input.
"""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

import helpers
from proxy_jax import checkpoint, recipes, train, workdir as workdir_lib
from proxy_jax import restore as restore_lib
from proxy_jax.data import corpus
from proxy_jax.evaluation import bpb, score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(**overrides):
    """The byte baseline shrunk (``helpers.TINY``), 6 steps with a checkpoint every 2."""
    return helpers.tiny_run_config("configs/bytes.py:tiny", **{"train.steps": 6, "train.checkpoint_every": 2,
                                                               **overrides})


def steps_on_disk(wd):
    return sorted(int(n) for n in os.listdir(os.path.join(wd, "checkpoints")) if n.isdigit())


def damage(wd, step, sub="checkpoints"):
    for dirpath, _, files in os.walk(os.path.join(wd, sub, str(step))):
        for name in files:
            with open(os.path.join(dirpath, name), "wb") as f:
                f.write(b"garbage")


def cli(module, *args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---- the lock ----------------------------------------------------------------------------------------

def test_lock_refuses_a_live_holder_takes_over_a_dead_one_and_releases(tmp_path):
    wd = str(tmp_path / "run")
    os.makedirs(wd)
    lock_path = os.path.join(wd, workdir_lib.LOCK)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(lock_path, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": holder.pid}, f)
        with pytest.raises(workdir_lib.WorkdirLockedError, match=f"process {holder.pid}"):
            with workdir_lib.lock(wd):
                pass
        assert json.load(open(lock_path))["pid"] == holder.pid  # a refused run leaves the lock alone
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and taken over; released (emptied) on exit.
    with workdir_lib.lock(wd):
        assert json.load(open(lock_path))["pid"] == os.getpid()
    assert open(lock_path).read() == ""


def test_lock_refuses_while_another_process_holds_the_flock(tmp_path):
    wd = str(tmp_path / "run")
    os.makedirs(wd)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", code, os.path.join(wd, workdir_lib.LOCK)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lib.WorkdirLockedError, match="is in use"):
            with workdir_lib.lock(wd):
                pass
    finally:
        other.kill()
        other.wait()
    with workdir_lib.lock(wd):  # the kernel dropped the dead process's flock
        pass


# ---- resuming with another config --------------------------------------------------------------------

def fake_run(wd, config):
    os.makedirs(os.path.join(wd, "checkpoints", "4"))
    workdir_lib.save_config(config, wd)


def test_resume_refuses_shape_changes_and_records_allowed_ones(tmp_path):
    wd = str(tmp_path / "run")
    config = small()
    fake_run(wd, config)
    saved = open(os.path.join(wd, "config.json")).read()
    changed = small(**{"seed": 3, "data.seq_len": 128, "model.d_model": 128, "train.steps": 20})
    with pytest.raises(workdir_lib.ConfigMismatchError) as e:
        workdir_lib.check_resume(changed, wd)
    message = str(e.value)
    for key in ("seed", "data.seq_len", "model.d_model"):
        assert key in message
    assert "train.steps" not in message and "\n" not in message
    assert open(os.path.join(wd, "config.json")).read() == saved
    assert not os.path.exists(os.path.join(wd, workdir_lib.CONFIG_HISTORY))

    allowed = small(**{"train.steps": 20, "opt.lr": 1e-4})
    train._keep_saved_phases(allowed, wd)  # as the loop does: train.steps rescaled the phases for a new run only
    changes = workdir_lib.check_resume(allowed, wd)
    assert changes == {"train.steps": (6, 20), "opt.lr": (3e-3, 1e-4)}
    assert not os.path.exists(os.path.join(wd, workdir_lib.CONFIG_HISTORY))  # recorded only once resumed
    workdir_lib.save_config(allowed, wd, changes)
    rows = [json.loads(line) for line in open(os.path.join(wd, workdir_lib.CONFIG_HISTORY))]
    assert rows[-1]["changed"] == {"train.steps": [6, 20], "opt.lr": [3e-3, 1e-4]}
    assert workdir_lib.check_resume(config, tmp_path / "fresh") == {}  # nothing to resume: anything goes


# ---- config files, evaluation inputs, skipped input ---------------------------------------------------

def test_config_file_mistakes_are_sentences(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        recipes.load_config("configs/nope.py:tiny")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    with pytest.raises(ValueError, match="does not parse"):
        recipes.load_config(str(bad))
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        recipes.load_config(str(bad))
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        recipes.load_config(os.path.join(ROOT, "configs/bytes.py:huge"))
    with pytest.raises(KeyError, match="Config key 'nothere' does not exist"):
        recipes.load_config(os.path.join(ROOT, "configs/bytes.py:tiny"), **{"nothere.seq_len": 3})


@pytest.mark.parametrize("spec,expect", [("configs/nope.py:tiny", "does not exist"),
                                         ("configs/bytes.py:huge", "Unknown preset 'huge'")])
def test_cli_config_mistakes_have_no_traceback(tmp_path, spec, expect):
    out = cli("proxy_jax.main", f"--config={spec}", f"--workdir={tmp_path}")
    assert out.returncode != 0 and expect in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_zero_documents_and_oversized_windows_are_refused():
    with pytest.raises(ValueError, match="no documents"):
        bpb.raw_bpb(lambda b: {"sum_nll_raw": 0.0, "raw_count": 0.0}, [], window=64, extra=1, batch_size=2)
    score.check_window(4096, 8, 384)  # the default evaluation fits
    with pytest.raises(ValueError, match=r"--window=\d+ needs about .* GiB") as e:
        score.check_window(10**9, 8, 65920)
    most = int(str(e.value).split("use --window=")[1].split()[0])
    score.check_window(most, 8, 65920)  # the suggested window fits
    with pytest.raises(ValueError, match="must be > 0"):
        score.check_window(0, 8, 384)


def test_skipped_input_is_reported_once_per_load_with_counts(tmp_path, caplog):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i}"}) for i in range(6)]
    lines[1] = "{not json"
    lines[3] = json.dumps({"text": ""})
    lines[4] = json.dumps({"other": "x"})
    path.write_text("\n".join(lines[:5]) + "\n\n" + lines[5] + "\n")
    data = small(**{"data.source": "jsonl", "data.path": str(path), "data.skip_malformed": True}).data
    corpus._REPORTED.clear()
    with caplog.at_level(logging.WARNING):
        train_split = corpus.load_split(data, "train")
        val_split = corpus.load_split(data, "validation")
    assert len(train_split) + len(val_split) == 3
    reports = [r.getMessage() for r in caplog.records if "Skipped" in r.getMessage()]
    assert len(reports) == 1, reports
    assert "1 empty documents, 2 malformed lines, 1 blank lines" in reports[0]
    assert "docs.jsonl:2" in reports[0]


# ---- checkpoints ---------------------------------------------------------------------------------------

def test_saving_a_step_twice_is_a_no_op_and_a_damaged_step_is_replaced(tmp_path):
    import jax.numpy as jnp

    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), async_save=False)
    state = {"w": jnp.arange(4.0)}
    assert ck.save(2, state, None, force=True)
    assert not ck.save(2, {"w": jnp.zeros(4)}, None, force=True)  # kept as it is
    abstract = jax.eval_shape(lambda: state)
    step, got = ck.restore(abstract, None)
    np.testing.assert_array_equal(got["w"], np.arange(4.0))
    damage(str(tmp_path), 2, sub="ck")
    assert ck.restore(abstract, None) == (None, None) and ck.unreadable == [2]
    assert ck.save(2, {"w": jnp.ones(4)}, None, force=True)  # the damaged step is set aside and rewritten
    np.testing.assert_array_equal(ck.restore(abstract, None)[1]["w"], np.ones(4))
    assert os.listdir(tmp_path / "ck.unreadable") == ["2"]
    ck.close()


def test_full_disk_during_a_save_is_a_sentence_and_leaves_no_temporary_directory(tmp_path, monkeypatch):
    from proxy_jax.data import elastic

    def no_space(self, directory, item=None, args=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    # The data-iterator item is the last thing a save writes: fail it as a full disk would.
    monkeypatch.setattr(elastic.ShardStateHandler, "save", no_space)
    wd = str(tmp_path / "full")
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left on device.*free disk space"):
        train.train(small(), wd, progress=False)  # the first save, at step 2, fails (small()'s step is compiled once)
    leftovers = [n for n in os.listdir(os.path.join(wd, "checkpoints")) if checkpoint.TMP_SUFFIX in n]
    assert leftovers == [] and steps_on_disk(wd) == []
    assert open(os.path.join(wd, workdir_lib.LOCK)).read() == ""  # the lock is released on failure


def test_io_failures_are_recognised_through_library_wrappers():
    # TensorStore reports a full disk as a ValueError carrying the OS error code; Orbax wraps errors.
    tensorstore = ValueError("RESOURCE_EXHAUSTED: Error writing ... [os_error_code='28']")
    try:
        try:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), "/w/checkpoints/4")
        except OSError as inner:
            raise RuntimeError("background save failed") from inner
    except RuntimeError as wrapped:
        assert checkpoint._io_reason(wrapped) == os.strerror(errno.EACCES)
    assert checkpoint._io_reason(tensorstore) == os.strerror(errno.ENOSPC)
    assert checkpoint._io_reason(ValueError("shapes do not match")) is None


@pytest.fixture(scope="module")
def preempted():
    """small() stopped by a preemption signal seen before step 4, a checkpoint step: checkpoints 2 and 4."""
    def build(wd):
        polls = iter([False] * 4 + [True])  # the poll before step 4 sees the signal
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(checkpoint.PreemptionGuard, "should_stop", lambda self: next(polls, False))
            summary = train.train(small(), wd, progress=False)
        assert summary["preempted_at"] == 4 and steps_on_disk(wd) == [2, 4]

    return helpers.shared_folder("test_reliability/preempted", build)


@pytest.mark.slow
def test_damaged_checkpoints_fall_back_then_stop_then_restart_on_request(tmp_path, preempted):
    wd = helpers.copy_run(preempted, tmp_path / "run")
    assert steps_on_disk(wd) == [2, 4]
    damage(wd, 4)
    summary = train.train(small(), wd, progress=False)  # falls back to 2, re-trains 4 over the damaged one
    assert summary["start_step"] == 2 and summary["final_step"] == 6
    assert os.listdir(os.path.join(wd, "checkpoints.unreadable")) == ["4"]
    assert steps_on_disk(wd) == [2, 4, 6]
    again = train.train(small(), wd, progress=False)  # a finished run re-run: a clean no-op
    assert again["start_step"] == 6 and again["final_step"] == 6

    for step in steps_on_disk(wd):
        damage(wd, step)
    with pytest.raises(checkpoint.UnreadableCheckpointsError, match="steps 2, 4, 6"):
        train.train(small(), wd, progress=False)
    summary = train.train(small(), wd, progress=False, restart_if_unreadable=True)
    assert summary["start_step"] == 0 and summary["final_step"] == 6


@pytest.mark.slow
def test_preemption_at_a_checkpoint_step_stops_cleanly(tmp_path, preempted):
    wd = helpers.copy_run(preempted, tmp_path / "run")
    resumed = train.train(small(), wd, progress=False)
    assert resumed["start_step"] == 4 and resumed["final_step"] == 6


# ---- a non-finite loss ----------------------------------------------------------------------------------

def packing_threads():
    """Live threads of data.host_prefetch (Grain names its prefetch threads so)."""
    return [t for t in threading.enumerate() if t.name.startswith("grain-thread-prefetch")]


DIVERGING = {"train.steps": 10, "train.checkpoint_every": 1, "opt.lr": 1e30}


@pytest.fixture(scope="module")
def diverged():
    """small() with a learning rate of 1e30 and a checkpoint at every step, stopped by its non-finite loss:
    the workdir and the error's message (``test_health`` resumes copies of it)."""
    def build(folder):
        with pytest.raises(train.NonFiniteLossError, match="Loss became") as e:
            train.train(small(**DIVERGING), os.path.join(folder, "run"), progress=False)
        assert not packing_threads(), "an error in the loop must stop the packing thread"
        with open(os.path.join(folder, "message.txt"), "w") as f:
            f.write(str(e.value))

    folder = helpers.shared_folder("test_reliability/diverged", build)
    return os.path.join(folder, "run"), open(os.path.join(folder, "message.txt")).read()


def test_non_finite_training_saves_only_finite_states(diverged):
    wd, message = diverged
    saved = steps_on_disk(wd)
    assert saved, "at least one good checkpoint was expected before the blow-up"
    healthy = [s for s in saved if (workdir_lib.checkpoint_health(wd, s) or {}).get("healthy")]
    if healthy:
        assert f"step {max(healthy)}" in message
    elif saved:
        assert "No checkpoint is marked healthy" in message and "resume_step=0" in message
    else:
        assert "No checkpoint was saved" in message
    for step in saved:  # every checkpoint on disk is finite
        restored = restore_lib.restore(wd, step)
        assert train.state_is_finite(restored.params)
