"""Runs ``tests/multidevice/`` (meshes over 8 fake CPU devices) in a process of its own.

The device count is fixed when JAX starts, so those tests cannot share this process; this test starts
one pytest for all of them, with the same marker selection as the outer run, and fails with its output.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_multidevice_suite(request):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_XDIST_WORKER")}
    env["PROXY_JAX_TEST_DEVICES"] = "8"
    markexpr = request.config.getoption("markexpr") or "not slow"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", markexpr,
         os.path.join("tests", "multidevice")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    summary = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode == 0, f"multi-device tests failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert " passed" in summary[0], summary
