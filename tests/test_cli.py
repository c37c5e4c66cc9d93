"""The command convention (``proxy_jax.cli``): every command's mistakes end in one ``error:`` sentence with
exit status 2 and no traceback, Ctrl-C at any moment exits 130 with a sentence that is true of the disk,
``--print_config``, and progress as plain lines when stderr is not a terminal.

Each case runs the real command in a subprocess, as a user would.
"""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, config_with
from proxy_jax import assemble, progress
from proxy_jax.model import ModelArgs

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
TINY = ["--config.train.steps=400", "--config.train.checkpoint_every=2", "--config.train.log_every=1",
        "--config.train.eval_every=0", "--config.train.tensorboard=False", "--config.train.sample_prompt=",
        "--config.data.seq_len=64", "--config.data.batch_size=8", "--config.model.num_layers=1",
        "--config.model.d_model=64", "--config.model.num_heads=2", "--config.model.num_kv_heads=2",
        "--config.model.head_dim=32", "--config.model.d_ff=128"]


def command(*argv, timeout=300):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def one_error(out, needle=""):
    """The command failed with exit 2 and printed nothing on stderr but an optional usage line and one
    ``error:`` line containing ``needle``."""
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not re.match(r"^[WI]\d{4} ", ln)]
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], lines
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("usage: ")), lines
    return lines[-1]


def start(*argv):
    """A command in the background with SIGINT at its default (a test runner started as a shell's background
    job inherits SIGINT ignored, and then so would the command)."""
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(predicate, proc, timeout=300):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout
        time.sleep(0.1)


def steps_on_disk(wd):
    d = os.path.join(wd, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


# ---- main ----------------------------------------------------------------------------------------------

def test_main_without_flags_prints_the_usage_line_and_one_sentence():
    line = one_error(command("-m", "proxy_jax.main"), "--config is required")
    out = command("-m", "proxy_jax.main", "--config=configs/bytes.py:tiny")
    one_error(out, "--workdir is required")
    assert out.stderr.splitlines()[0].startswith("usage: python -m proxy_jax.main --config=")
    assert "Accidents" not in out.stderr and line


def test_print_config_shows_the_preset_with_overrides_and_exits_0(tmp_path):
    out = command("-m", "proxy_jax.main", "--config=configs/bytes.py:tiny", "--config.train.steps=7",
                  "--config.model.dtype=fp16", "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "--config.train.steps=7" in lines and "--config.proxy.name='bytes'" in lines
    assert "--config.model.dtype='fp16'" in lines
    expected = config_with("configs/bytes.py:tiny", **{"train.steps": 7, "model.dtype": "fp16"})
    assert len(lines) == sum(len(v) if hasattr(v, "keys") else 1 for v in expected.values())
    assert not os.listdir(tmp_path)


def test_dtype_spellings_are_accepted_and_others_refused_before_compiling(tmp_path):
    for spelled, name in (("fp16", "float16"), ("half", "float16"), ("bf16", "bfloat16"), ("FP32", "float32")):
        config = config_with("configs/bytes.py:tiny", **{"model.dtype": spelled})
        assemble.validate(config)
        assert ModelArgs.from_config(config.model, 384).dtype == name
    wd = tmp_path / "run"
    line = one_error(command("-m", "proxy_jax.main", "--config=configs/bytes.py:tiny", f"--workdir={wd}",
                             "--config.model.dtype=fp8"), "--config.model.dtype='fp8'")
    assert "float16 (fp16" in line and "bfloat16 (bf16)" in line


def test_optimizer_mistakes_stop_before_a_tokenizer_is_trained(tmp_path):
    with pytest.raises(ValueError, match=r"--config.opt.b2=1.5 must lie in \[0, 1\)"):
        assemble.validate(config_with("configs/bytes.py:tiny", **{"opt.b2": 1.5}))
    wd = tmp_path / "run"
    t0 = time.time()
    one_error(command("-m", "proxy_jax.main", "--config=configs/proxy_tokens.py:tiny", f"--workdir={wd}",
                      "--config.opt.lr=0"), "--config.opt.lr=0.0 must be > 0")
    assert not any("tokenizer" in f or f.endswith(".model") for _, _, fs in os.walk(wd) for f in fs)
    assert time.time() - t0 < 120  # a tokenizer on the default corpus alone takes longer on this machine


# ---- preprocess and evaluate -----------------------------------------------------------------------------

def test_preprocess_mistakes_are_one_sentence(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "def f(): pass"}\n{"text": broken\n')
    one_doc = tmp_path / "one.jsonl"
    one_doc.write_text('{"text": "def f(): pass"}\n')
    base = ["-m", "proxy_jax.preprocess", "--config=configs/proxy_gzip.py:tiny", f"--output={tmp_path / 'out'}"]
    one_error(command(*base, "--config.data.source=jsonl", f"--config.data.path={bad}"), f"{bad}:2: malformed JSONL")
    one_error(command("-m", "proxy_jax.preprocess", "--config=configs/proxy_tokens.py:tiny",
                      f"--output={tmp_path / 'out'}", "--config.data.source=jsonl", f"--config.data.path={one_doc}",
                      "--config.data.val_fraction=0.99"), "the training split is empty")
    one_error(command(*base, "--process_index=2", "--process_count=2"), "--process_index=2 must be in [0, 2)")
    one_error(command(*base, "--config.data.source=jsonl", f"--config.data.path={tmp_path / 'nope.jsonl'}"),
              "matches no JSONL file")
    one_error(command("-m", "proxy_jax.preprocess", "--config=configs/proxy_gzip.py:tiny"), "--output is required")
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_evaluate_mistakes_exit_2_and_name_only_its_own_flags(tmp_path):
    from proxy_jax.evaluate import in_flags

    one_error(command("-m", "proxy_jax.evaluate", f"--workdir={tmp_path / 'none'}"), "config.json does not exist")
    one_error(command("-m", "proxy_jax.evaluate", "--task=nope"), "is not a task")
    assert in_flags("a.jsonl:2: malformed JSONL line: x; fix it or pass --config.data.skip_malformed=True to skip "
                    "(and count) such lines.").endswith("pass --skip_malformed to skip (and count) such lines.")
    assert in_flags("config.data.path='x.jsonl' matches no JSONL file (.jsonl); fix the path.").startswith(
        "--data='x.jsonl' matches")
    assert in_flags("use --window=9 or less (or a smaller train.eval_batch_size).").endswith("--batch_size).")
    assert "--config." not in in_flags("set --config.data.virtual_shards=2 (a multiple of the process count)")


def test_sweep_mistakes_are_one_sentence(tmp_path):
    one_error(command("launch/sweep.py", "run", f"--sweep={tmp_path / 'nope.py'}", f"--root={tmp_path}"),
              "does not exist")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {'preset': 'tiny'}\n")
    one_error(command("launch/sweep.py", "status", f"--root={tmp_path}", f"--sweep={bad}"), "lacks the key 'sizes'")


# ---- progress without a terminal -------------------------------------------------------------------------

def test_progress_lines_come_at_the_interval_with_rate_and_eta():
    now = [0.0]
    out = io.StringIO()
    lines = progress.Lines(100, initial=10, every_s=30, stream=out, clock=lambda: now[0])
    for step in range(11, 101):  # one step every 2 s: a line every 15 steps, each rate 0.5 steps/s
        now[0] += 2.0
        lines.set_postfix(loss=f"{1 / step:.3f}")
        lines.update(1)
    lines.close()
    rows = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(rows) == 6
    assert rows[0] == "train step 25/100 | loss 0.040 | 0.50 steps/s | elapsed 0:00:30 | ETA 0:02:30"
    assert rows[-1] == "train step 100/100 | loss 0.010 | 0.50 steps/s | elapsed 0:03:00"


# ---- Ctrl-C --------------------------------------------------------------------------------------------

def test_guard_turns_the_first_ctrl_c_into_a_save_request_and_the_second_into_an_interrupt():
    from proxy_jax import checkpoint, interrupts

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's foreground process
    try:
        with checkpoint.PreemptionGuard() as guard:
            assert not guard.should_stop()
            signal.raise_signal(signal.SIGINT)  # no exception: a flag the loop polls
            assert guard.should_stop() and guard.stop_reason == "Ctrl-C" and interrupts.received()
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert not interrupts.received()  # answered: a later run in the same process starts afresh
        interrupts.note()  # a Ctrl-C whose KeyboardInterrupt a library swallowed before the loop began
        with checkpoint.PreemptionGuard() as guard:
            assert guard.should_stop() and guard.stop_reason == "Ctrl-C"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        interrupts.clear()
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("when", [0.5, "lock"])
def test_ctrl_c_during_setup_exits_130_and_claims_no_checkpoint(tmp_path, when):
    wd = str(tmp_path / "run")
    proc = start("-m", "proxy_jax.main", "--config=configs/bytes.py:tiny", f"--workdir={wd}", *TINY)
    if when == "lock":  # every check passed and the workdir is taken: the run is being built
        lock = os.path.join(wd, "lock")
        wait_for(lambda: os.path.exists(lock) and os.path.getsize(lock) > 0, proc)
    else:  # Python is still importing JAX
        time.sleep(when)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Segmentation" not in err and "Fatal" not in err, err[-3000:]
    assert steps_on_disk(wd) == []
    assert err.strip().splitlines()[-1] == (f"interrupted: no checkpoint was saved in {wd} yet; the same command "
                                            "starts the run from step 0.")


@pytest.mark.slow
def test_ctrl_c_while_training_saves_names_that_step_and_the_rerun_resumes(tmp_path):
    """Also: stderr is a pipe, so progress is plain lines (no carriage returns) at train.progress_every_s."""
    wd = str(tmp_path / "run")
    argv = ["-m", "proxy_jax.main", "--config=configs/bytes.py:tiny", f"--workdir={wd}", *TINY,
            "--config.train.progress_every_s=0.5"]
    proc = start(*argv)
    wait_for(lambda: len(steps_on_disk(wd)) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    saved = re.search(r"Ctrl-C received: saved step (\d+) and stopped", err)
    assert saved, err[-3000:]
    step = int(saved[1])
    assert steps_on_disk(wd)[-1] == step  # saved at the next step, which need not be a checkpoint step
    assert err.strip().splitlines()[-1] == (f"interrupted: {wd} keeps its newest checkpoint, step {step}; run the "
                                            "same command to resume from it.")
    assert "\r" not in err
    rows = [ln for ln in err.splitlines() if ln.startswith("train step ")]
    assert rows and all(re.fullmatch(r"train step \d+/400 \| loss \d+\.\d{3} \| \d+\.\d\d steps/s \| "
                                     r"elapsed \d:\d\d:\d\d \| ETA \d:\d\d:\d\d", r) for r in rows), rows

    rerun = command(*[a.replace("steps=400", f"steps={step + 3}") for a in argv])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from step {step}" in rerun.stderr
    rows = [ln for ln in rerun.stderr.splitlines() if ln.startswith("train step ")]
    assert rows[-1].startswith(f"train step {step + 3}/{step + 3} | loss ") and "\r" not in rerun.stderr


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_and_the_next_run_resumes_the_interrupted_run(tmp_path, caplog):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_sweep import make_sweep

    from proxy_jax.scaling import sweep as sweep_lib

    sweep = make_sweep(["bytes"], [4e9], sizes=("a",))
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(f"def get_config():\n    return {sweep!r}\n")
    root = str(tmp_path / "root")
    name = sweep_lib.runs(sweep)[0].name
    wd = os.path.join(root, name)
    proc = start("launch/sweep.py", "run", f"--sweep={sweep_file}", f"--root={root}")
    metrics = os.path.join(wd, "metrics.jsonl")
    wait_for(lambda: os.path.exists(metrics) and len(open(metrics).readlines()) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: finished runs keep their results")
    saved = steps_on_disk(wd)
    assert saved and not os.path.exists(os.path.join(wd, sweep_lib.RESULT))

    caplog.set_level(logging.INFO, logger="proxy_jax")
    results = sweep_lib.run_sweep(sweep, root, log=lambda _: None)
    assert f"Resumed from step {saved[-1]}" in caplog.text
    assert len(results) == 1 and results[0]["name"] == name and results[0]["logged_steps"] == results[0]["steps"]
    assert json.load(open(os.path.join(wd, sweep_lib.RESULT)))["raw_bpb"] > 0
