"""Every path a user types works: relative, ``./``, ``../``, ``~``, symlinked and non-ASCII-with-spaces workdirs
and data paths train through the command line, stop on SIGTERM, resume to the losses of a run named by its
absolute path, and are read back by ``evaluate``, ``export`` and the lm-eval backend by the same name
(``storage.resolve`` makes each absolute once, where it enters). A checkpoint that fails to restore is set aside
only when it is damaged: a permission failure or a bug stops and moves nothing."""

import builtins
import logging
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers
from proxy_jax import checkpoint, metrics, storage, train
from proxy_jax import restore as restore_lib
from proxy_jax import workdir as workdir_lib

STEPS = 24
NAME = "runs/ré sumé ü"  # non-ASCII, with spaces


def _overrides(corpus: str, **more) -> list[str]:
    values = {**helpers.TINY, "train.steps": STEPS, "train.checkpoint_every": 1, "data.source": "dir",
              "data.path": corpus, "data.val_fraction": 0.2, **more}
    return [f"--config.{k}={v}" for k, v in values.items()]


def _command(module: str, args: list[str], cwd, env=None) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(helpers.ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(module: str, args: list[str], cwd, env=None) -> subprocess.CompletedProcess:
    return _finish(_command(module, args, cwd, env))


def _losses(workdir: str) -> dict[int, float]:
    return {int(r["step"]): r["train/loss"] for r in metrics.read_metrics(workdir) if "train/loss" in r}


def _logged_rows(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    return sum(1 for _ in open(path, encoding="utf-8")) if os.path.exists(path) else 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """One run named by its absolute path, and the same run named ``../runs/ré sumé ü`` from ``base/sub`` with
    its corpus named ``../corpus ä`` (relative, non-ASCII, spaces), stopped by SIGTERM and resumed through a
    relative symbolic link ``link``."""
    base = tmp_path_factory.mktemp("paths")
    shutil.copytree(corpus, base / "corpus ä")
    (base / "sub").mkdir()
    config = f"--config={helpers.ROOT}/configs/bytes.py:tiny"
    absolute = str(base / "absolute")
    done = _run("proxy_jax.main", [config, f"--workdir={absolute}", *_overrides(str(base / "corpus ä"))], base)
    assert done.returncode == 0, done.stderr[-3000:]

    sub = base / "sub"
    relative = [config, f"--workdir=../{NAME}", *_overrides("../corpus ä")]
    proc = _command("proxy_jax.main", relative, sub)
    target = str(base / NAME)
    deadline = time.time() + 300
    while _logged_rows(target) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stopped = _finish(proc)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at step" in stopped.stdout, stopped.stdout[-2000:]
    os.symlink(f"../{NAME}", sub / "link")
    resumed = _run("proxy_jax.main", [config, "--workdir=link", *_overrides("../corpus ä")], sub)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"base": base, "sub": sub, "absolute": absolute, "relative": target, "stopped": stopped,
            "resumed": resumed}


def test_a_relative_run_stopped_by_sigterm_resumes_to_the_losses_of_the_absolute_one(runs):
    stopped_at = int(runs["stopped"].stdout.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 0 < stopped_at < STEPS
    assert f'"start_step": {stopped_at}' in runs["resumed"].stdout
    want, got = _losses(runs["absolute"]), _losses(runs["relative"])
    assert sorted(got) == list(range(STEPS)) and got == want  # bitwise, step by step
    saved = json.load(open(os.path.join(runs["relative"], workdir_lib.CONFIG), encoding="utf-8"))
    assert saved["data"]["path"] == str(runs["base"] / "corpus ä")  # recorded absolute
    assert sorted(os.listdir(runs["sub"])) == ["link"]  # nothing was written under the relative names' folder


@pytest.mark.parametrize("form", ["runs/ré sumé ü", "./runs/ré sumé ü", "../base/runs/ré sumé ü", "~/ré sumé ü",
                                  "link", "file://{base}/runs/ré sumé ü"])
def test_every_form_of_a_name_restores_the_same_run(runs, form, monkeypatch, tmp_path):
    base = runs["base"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    os.symlink(runs["relative"], cwd / "link")
    (tmp_path / "base").symlink_to(base)  # ../base from cwd
    shutil.copytree(base / "runs", cwd / "runs", symlinks=True)
    monkeypatch.setenv("HOME", str(base / "runs"))
    monkeypatch.chdir(cwd)
    run = restore_lib.restore(form.format(base=base))
    assert os.path.isabs(run.workdir) and run.step == STEPS
    for a, b in zip(jax_leaves(run.params), reference_params(runs["absolute"])):
        np.testing.assert_array_equal(a, b)


_REFERENCE = {}


def reference_params(workdir: str) -> list[np.ndarray]:
    if workdir not in _REFERENCE:
        _REFERENCE[workdir] = jax_leaves(restore_lib.restore(workdir).params)
    return _REFERENCE[workdir]


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_evaluate_and_export_read_the_run_by_its_relative_name(runs):
    from proxy_jax.evaluation import score

    sub = runs["sub"]
    scored = _run("proxy_jax.evaluate", [f"--workdir=../{NAME}", "--max_docs=2"], sub)
    assert scored.returncode == 0, scored.stderr[-3000:]
    got = json.loads(scored.stdout)
    want = score.evaluate_workdir(runs["absolute"], max_docs=2)
    assert got["step"] == STEPS and got["raw_bpb"] == pytest.approx(want["raw_bpb"], rel=1e-6)

    pytest.importorskip("safetensors", reason="the [export] extra is not installed")
    pytest.importorskip("tokenizers", reason="the [export] extra is not installed")
    out = sub / "hf ö"
    exported = _run("proxy_jax.export", ["--workdir=link", "--out=./hf ö"], sub)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert f"to {out}" in exported.stdout and os.path.isfile(out / "model.safetensors")
    shutil.rmtree(out)


def test_the_lm_eval_backend_reads_the_run_by_its_relative_name(runs, monkeypatch):
    pytest.importorskip("lm_eval", reason="the [lmeval] extra is not installed")
    from proxy_jax.evaluation import lm_eval_backend

    monkeypatch.chdir(runs["sub"])
    lm = lm_eval_backend.ProxyJaxLM(workdir=f"../{NAME}", batch_size=2, max_length=32)
    assert lm.run.workdir == runs["relative"] and lm.run.step == STEPS


def test_a_home_workdir_on_the_command_line_is_not_a_literal_tilde_folder(runs, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "run").write_text("a file where the workdir would be")  # refused before anything trains
    refused = _run("proxy_jax.main", [f"--config={helpers.ROOT}/configs/bytes.py:tiny", "--workdir=~/run",
                                      *_overrides(str(runs["base"] / "corpus ä"))], tmp_path, env={"HOME": str(home)})
    assert refused.returncode == 2 and str(home / "run") in refused.stderr.splitlines()[-1], refused.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["home"]  # no literal ./~ folder


def test_resolve_makes_local_paths_absolute_once_and_leaves_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    assert storage.resolve("run") == str(tmp_path / "run")
    assert storage.resolve("./a/../b c") == str(tmp_path / "b c")
    assert storage.resolve("~/x") == "/home/someone/x"
    assert storage.resolve("file:///data/x") == "/data/x" and storage.resolve("file://rel") == str(tmp_path / "rel")
    assert storage.resolve("gs://bucket/run") == "gs://bucket/run"
    assert storage.resolve("") == "" and storage.resolve(None) is None
    for once in ("run", "~/x", "file:///data/x", "gs://b/r"):
        assert storage.resolve(storage.resolve(once)) == storage.resolve(once)
    config = helpers.config_with(**{"data.source": "jsonl", "data.path": "d.jsonl", "proxy.m1_workdir": "../m1",
                                    "proxy.model_path": "~/t.model"})
    storage.resolve_config_paths(config)
    assert (config.data.path, config.proxy.m1_workdir, config.proxy.model_path) == (
        str(tmp_path / "d.jsonl"), str(tmp_path.parent / "m1"), "/home/someone/t.model")
    tfds = helpers.config_with(**{"data.source": "tfds", "data.path": "mnist"})
    storage.resolve_config_paths(tfds)
    assert tfds.data.path == "mnist"  # a dataset name, not a path


# ---- a damaged checkpoint vs a failure of another kind --------------------------------------------------

@pytest.fixture()
def saved(tmp_path):
    import jax.numpy as jnp

    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), async_save=False)
    for step in (2, 4):
        ck.save(step, {"w": jnp.full(4, float(step))}, None, force=True)
    yield ck, jax_abstract({"w": jnp.zeros(4)}), tmp_path
    ck.close()


def jax_abstract(tree):
    import jax

    return jax.eval_shape(lambda: tree)


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)


def test_missing_files_inside_a_step_are_damage(saved):
    ck, abstract, root = saved
    os.remove(root / "ck" / "4" / "state" / "manifest.ocdbt")
    step, state = ck.restore(abstract, None)
    assert step == 2 and ck.unreadable == [4]
    np.testing.assert_array_equal(state["w"], np.full(4, 2.0))


def test_a_permission_failure_stops_with_its_own_sentence_and_moves_nothing(saved, monkeypatch):
    ck, abstract, root = saved
    before = _tree(root)
    real_open = builtins.open
    newest = str(root / "ck" / "4") + os.sep

    def refused(path, *args, **kwargs):
        if str(path).startswith(newest):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refused)
    with pytest.raises(checkpoint.CheckpointAccessError, match=r"step 4 .*: permission denied .*no checkpoint was "
                                                               r"moved"):
        ck.restore(abstract, None)
    assert ck.unreadable == [] and _tree(root) == before


def test_a_bug_is_raised_as_it_is_and_moves_nothing(saved, monkeypatch):
    ck, abstract, root = saved
    before = _tree(root)

    def broken(*args, **kwargs):
        raise TypeError("restore() got an unexpected keyword argument")

    monkeypatch.setattr(ck.manager, "restore", broken)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ck.restore(abstract, None)
    assert ck.unreadable == [] and _tree(root) == before


def test_restart_if_unreadable_moves_nothing_on_a_permission_failure(runs, tmp_path, monkeypatch):
    wd = str(tmp_path / "copy")
    shutil.copytree(runs["absolute"], wd)
    before = _tree(wd)
    real_open = builtins.open
    steps = os.path.join(wd, workdir_lib.CHECKPOINTS) + os.sep

    def refused(path, *args, **kwargs):
        if str(path).startswith(steps):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    config = workdir_lib.load_config(wd)
    monkeypatch.setattr(builtins, "open", refused)
    with pytest.raises(checkpoint.CheckpointAccessError, match="permission denied"):
        train.train(config, wd, progress=False, restart_if_unreadable=True)
    monkeypatch.undo()
    assert _tree(wd) == before
    assert not os.path.exists(os.path.join(wd, "checkpoints.unreadable"))
    assert not os.path.exists(os.path.join(wd, "metrics.superseded.jsonl"))


def test_a_reader_of_damaged_checkpoints_names_only_its_own_flags(runs, tmp_path, capsys):
    from proxy_jax import evaluate

    wd = str(tmp_path / "damaged")
    shutil.copytree(runs["absolute"], wd)
    for dirpath, _, files in os.walk(os.path.join(wd, workdir_lib.CHECKPOINTS)):
        for name in files:
            with open(os.path.join(dirpath, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(SystemExit) as e:
        evaluate.main([f"--workdir={wd}", "--max_docs=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: No checkpoint in") and "damaged" in err
    assert "--restart_if_unreadable" not in err


def test_late_library_echoes_of_a_reported_failure_are_not_printed(caplog):
    import asyncio
    import errno
    import types

    from proxy_jax import checkpoint_failures

    directory = "/nowhere/reported/checkpoints"
    checkpoint_failures._report_once(directory)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for exc in (full, RuntimeError("an unrelated failure")):  # asyncio's own report of an abandoned task
                loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": exc})
    finally:
        loop.close()
    reported = [r.exc_info[1] for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(reported) == 1 and str(reported[0]) == "an unrelated failure"

    async def reading():
        pass

    printed = []
    hook = checkpoint_failures._drop_reported_coroutines(printed.append)
    for text in (f'Error reading {{"kvstore": {{"path": "{directory}/4/state/"}}}}', "another coroutine's error"):
        coro = reading()
        hook(types.SimpleNamespace(exc_type=ValueError, exc_value=ValueError(text), exc_traceback=None, err_msg=None,
                                   object=coro))
        coro.close()
    assert [str(u.exc_value) for u in printed] == ["another coroutine's error"]


def test_a_run_recorded_with_a_relative_data_path_resumes_with_the_absolute_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = helpers.config_with(**{"data.source": "jsonl", "data.path": "docs.jsonl"})
    wd = tmp_path / "run"
    (wd / workdir_lib.CHECKPOINTS / "4").mkdir(parents=True)
    (wd / workdir_lib.CONFIG).write_text(saved.to_json_best_effort())
    now = helpers.config_with(**{"data.source": "jsonl", "data.path": "./docs.jsonl"})
    storage.resolve_config_paths(now)
    assert workdir_lib.check_resume(now, str(wd)) == {}
    other = helpers.config_with(**{"data.source": "jsonl", "data.path": str(tmp_path / "other.jsonl")})
    with pytest.raises(workdir_lib.ConfigMismatchError, match="data.path"):
        workdir_lib.check_resume(other, str(wd))


def test_a_sweep_root_is_a_folder_named_any_way_and_a_url_is_refused(tmp_path):
    from proxy_jax.scaling import sweep as sweep_lib

    script = str(helpers.ROOT / "launch" / "sweep.py")
    env = {**os.environ, "PYTHONPATH": str(helpers.ROOT), "JAX_PLATFORMS": "cpu"}
    refused = subprocess.run([sys.executable, script, "status", "--root=gs://bucket/sweep"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: --root=gs://bucket/sweep is a URL; a sweep keeps its runs in a folder: mount the bucket")
    assert os.listdir(tmp_path) == []
    (tmp_path / "sweep ü" / "run_a").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "sweeps").symlink_to(tmp_path / "sweep ü")
    env["HOME"] = str(tmp_path / "home")
    status = subprocess.run([sys.executable, script, "status", "--root=~/sweeps"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0 and "run_a" in status.stdout, status.stderr[-2000:]
    assert sweep_lib.local_root("./sweep ü/../sweep ü") == os.path.abspath("sweep ü")
