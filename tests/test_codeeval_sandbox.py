"""The sandbox: honest programs pass, hostile ones fail cleanly while the harness and machine survive."""

import os
import textwrap

from proxy_jax.codeeval import sandbox


def test_success_needs_exit_zero_and_the_marker():
    ok, exit0, os_exit0, error = sandbox.run_many(
        ["print('hello')", "import sys\nsys.exit(0)\nprint('tests')", "import os\nos._exit(0)", "1 / 0"], workers=2)
    assert ok.status == "passed" and ok.output.strip() == "hello"
    assert exit0.status == "failed" and os_exit0.status == "failed"
    assert error.status == "failed" and "ZeroDivisionError" in error.detail


def test_hostile_programs_fail_and_harm_nothing(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    hostile = {
        "infinite loop": "while True:\n    pass",
        "memory bomb": "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))",
        "fork loop": "import os\nwhile True:\n    os.fork()",
        "delete outside": f"import os\nos.remove({str(sentinel)!r})",
        "rmtree outside": f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        "write outside": f"open({str(tmp_path / 'evil.txt')!r}, 'w').write('x')",
        "socket": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
        "kill parent": "import os\nos.kill(os.getppid(), 9)",
        "exit before tests": "import sys\nsys.exit(0)\nassert False",
        "100 MB output": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)",
        "subprocess": "import subprocess\nsubprocess.run(['rm', '-rf', '/'])",
    }
    results = sandbox.run_many(list(hostile.values()), workers=2, timeout_s=3.0, memory_mb=512,
                               max_output_bytes=1 << 16)
    for name, result in zip(hostile, results):
        assert not result.passed, name
        assert len(result.output) <= 1 << 16, name
    by_name = dict(zip(hostile, results))
    assert by_name["infinite loop"].status == "timeout"
    assert by_name["100 MB output"].status == "output_limit"
    assert sentinel.read_text() == "keep me"
    assert not (tmp_path / "evil.txt").exists()
    os.kill(os.getpid(), 0)  # still here (the kill-parent program targeted this process)


def test_forks_that_escape_the_prelude_are_reaped():
    # ctypes bypasses the prelude; the children leave the process group, then sleep.
    program = textwrap.dedent("""
        import ctypes, os, sys, time
        libc = ctypes.CDLL(None)
        for _ in range(10):
            pid = libc.fork()
            if pid == 0:
                libc.setsid()
                time.sleep(60)
                os._exit(0)
            print(pid, flush=True)
        raise SystemExit(3)
    """)
    result = sandbox.run_program(program, timeout_s=10.0)
    assert result.status == "failed"
    pids = [int(x) for x in result.output.split() if x.isdigit()]
    assert len(pids) == 10
    if sandbox.isolation()["drop_uid"]:  # without a dedicated uid only the process group is killed
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    state = next(line for line in f if line.startswith("State:"))
                assert "Z" in state, f"child {pid} still running: {state}"  # a zombie awaiting init is dead
            except FileNotFoundError:
                pass


def test_temp_directory_is_removed_and_private():
    result = sandbox.run_program("import os\nopen('f.txt', 'w').write('x')\nprint(os.getcwd())")
    assert result.passed
    assert not os.path.exists(result.output.strip())


def test_bad_arguments_name_the_value():
    import pytest

    with pytest.raises(ValueError, match="timeout_s=0"):
        sandbox.run_program("pass", timeout_s=0)
    with pytest.raises(ValueError, match="workers=-1"):
        sandbox.run_many(["pass"], workers=-1)
