"""Two processes x 2 CPU devices, each feeding its half of the batch, train like one process x 4 devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
# Same mesh (2, 2, 1) and float32 compute on both sides; only cross-process collectives differ.
RTOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, name, *args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(WORKER.parent.parent)  # the tree under test, not whichever copy is installed
    log = open(tmp_path / f"{name}.log", "w")
    cmd = [sys.executable, str(WORKER), "--out", str(tmp_path / f"{name}.json"), *args]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=WORKER.parent.parent)


def finish(tmp_path, name, proc, timeout=600):
    rc = proc.wait(timeout=timeout)
    log = (tmp_path / f"{name}.log").read_text()
    assert rc == 0, f"{name} exited with {rc}:\n{log[-4000:]}"
    return json.loads((tmp_path / f"{name}.json").read_text())


# ~40 s on 2 cores (three processes each compile the model); kept in the default run: multi-host is a core path.
def test_two_processes_match_one(tmp_path):
    port = free_port()
    procs = {f"worker{i}": launch(tmp_path, f"worker{i}", "--mode", "worker", "--process_id", str(i), "--port", str(port))
             for i in range(2)}
    procs["reference"] = launch(tmp_path, "reference", "--mode", "reference")
    try:
        results = {name: finish(tmp_path, name, proc) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    ref = results["reference"]
    assert ref["process_count"] == 1 and ref["devices"] == 4
    losses = [m["loss"] for m in ref["metrics"]]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the steps really train
    for i in range(2):
        got = results[f"worker{i}"]
        assert got["process_count"] == 2 and got["devices"] == 4
        for step, (a, b) in enumerate(zip(got["metrics"], ref["metrics"])):
            for key in ("loss", "raw_loss", "comp_loss", "grad_norm", "lr"):
                np.testing.assert_allclose(a[key], b[key], rtol=RTOL, err_msg=f"worker{i} step {step} {key}")
            for key in ("tokens", "raw_targets", "comp_targets"):
                assert a[key] == b[key], (i, step, key)
    assert ref["metrics"][0]["comp_targets"] > 0 and ref["metrics"][0]["raw_targets"] > 0
    # Evaluation over two processes scores every byte once and agrees with one process.
    for i in range(2):
        got = results[f"worker{i}"]["eval"]
        assert got["raw_bytes"] == ref["eval"]["raw_bytes"] > 0
        np.testing.assert_allclose(got["raw_bpb"], ref["eval"]["raw_bpb"], rtol=RTOL)
