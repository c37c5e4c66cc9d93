"""Run untrusted Python programs (model completions plus their tests) one per isolated process.

``run_program(source)`` runs one complete program and returns a ``Result``; ``run_many(sources)`` runs
many in parallel (one launch per program, ``workers`` at a time) and ``iter_many`` yields them as they
finish. A program *passes* iff its process exits with code 0 AND the bootstrap wrote a per-run random
nonce to a private pipe after the program's last statement ran; so ``sys.exit(0)`` / ``os._exit(0)``
before the tests finish is a failure.

Each program gets, from the harness side (these are the guarantees):
- its own process, launched as a fresh ``python -I -B`` interpreter, in its own session and process
  group, working directory a fresh temporary directory that is removed afterwards (its own tmpfs with
  the mount namespace below); the files named in ``keep`` are copied out to ``keep_dir`` after the program;
- a wall-clock limit: on expiry the whole process group is SIGKILLed (status "timeout");
- rlimits set before the program runs: CPU seconds, address space (``memory_mb``), file size (so
  output is capped at ``max_output_bytes``: stdout and stderr go to a file, never into the harness's
  memory beyond that cap; status "output_limit" when reached), open files, processes, no core dumps;
- when the harness runs as root and ``unshare``/``setpriv`` exist (see ``isolation()``): a fresh network
  namespace (no interface but a down loopback: no network at all) and a dedicated unprivileged uid per
  concurrent run that keeps only CAP_DAC_READ_SEARCH (it can READ any file, so the interpreter and
  site-packages under /root load, but it cannot write, delete or rename files it does not own, cannot
  signal the harness or other runs, and RLIMIT_NPROC binds it); after the run every process of that
  uid is killed, so even a fork loop that left its process group is reaped;
- without root: ``unshare -rn`` (a user plus network namespace) when the kernel permits it, else
  nothing at the OS level for the network; the process, rlimits and group kill still hold, but
  RLIMIT_NPROC may not bind. With the mount namespace below it also gets a pid namespace whose first
  process is the program: when the program ends or is killed, the kernel kills every process it left
  (as pid 1 the program ignores the signals it sends itself whose default action would end it);
- a private mount namespace (``isolation()["mounts"]``: as root, or without root where user namespaces
  are allowed; see ``mountns``): the whole filesystem is read-only, even through libc or ``ctypes``
  (EROFS), except fresh tmpfs mounts on ``/tmp``, ``/var/tmp``, ``/dev/shm`` and the working directory,
  each capped at ``scratch_mb`` MiB and ``mountns.INODES`` files (ENOSPC past that; the working directory
  has room for ``keep`` on top) and freed by the kernel when the run's processes are gone; the host's
  files in those places are not visible at all, and the directories in ``share`` are bound back
  read-only. The program keeps no capability but CAP_DAC_READ_SEARCH (with the uid drop, and then a
  seccomp filter refuses ``open_by_handle_at``, which would reach host files through its output file's
  descriptor; none otherwise) and runs with no_new_privs, so it cannot unmount or remount anything.
  So no file it writes outlives its run (but its capped output and the ``keep`` files, which the
  harness copies out), and it cannot create, change or delete a file of the host (device nodes and
  Unix sockets that its uid may open stay reachable);
- without that namespace (``isolation()`` then logs one warning saying so): the filesystem is what the
  uid allows: with the uid drop, the program cannot change files it does not own but CAN create files
  in world-writable places (/tmp, /var/tmp, /dev/shm) through ``ctypes``, and they stay after the run;
  without it, the filesystem is open to whatever the harness's user may do.

Inside the process a prelude (NOT a security boundary: ``ctypes`` or attribute archaeology get past
it; it exists to turn common accidents into clean failures) replaces: ``socket.socket`` and friends,
``os.fork``/``forkpty``/``posix_spawn*``/``spawn*``/``exec*``/``system``/``popen``, ``subprocess.Popen``,
``os.kill``/``killpg``, ``os.setsid``, and the destructive path calls ``os.remove``/``unlink``/``rmdir``/
``removedirs``/``rename``/``renames``/``replace``/``chmod``/``chown``/``truncate``/``link``/``symlink``,
``shutil.rmtree``/``move`` and ``open``/``os.open`` for writing, which raise PermissionError when the
target lies outside the temporary directory. What is NOT guaranteed: secrecy (with the uid drop every
file on the machine is readable; without it, everything the harness's user can read), protection of
world-writable places (e.g. /tmp) against ctypes-level writes WITHOUT the mount namespace, a bound on
memory held by a tmpfs that a program mounts in a user namespace of its own (the kernel lets it create
one; that tmpfs is uncapped but also vanishes with the run), and fairness under CPU contention (the
wall limit counts time spent waiting for a core).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import json
import logging
import marshal
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterable, Iterator, Sequence

from proxy_jax.codeeval import bootstrap, mountns

STATUSES = ("passed", "failed", "timeout", "output_limit", "error")

_NPROC = 64  # threads count too; OpenBLAS and friends are pinned to one thread below
_NOFILE = 256
_UID_BASE = 200_000  # unprivileged uids used per concurrent run; no /etc/passwd entry needed
_SETUP_FAILED = 125  # the bootstrap's exit code when the private mounts could not be made (in bootstrap too)
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    """Outcome of one program: ``status`` in STATUSES, a short ``detail``, the captured ``output``."""

    status: str
    detail: str
    output: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# What the sandboxed interpreter runs (header, mounts, limits, prelude, program), compiled once here: the
# interpreter is this one, and compiling it in every launch cost more CPU than the mounts. The program
# file starts with its length and the marshalled code; ``_STUB`` reads and runs it.
_BOOT = marshal.dumps(compile(bootstrap.SOURCE, "<sandbox>", "exec"))
_STUB = "import marshal, sys; exec(marshal.loads(sys.stdin.buffer.read(int(sys.stdin.buffer.readline()))))"


@functools.cache
def isolation() -> dict:
    """What this machine allows: {"netns": bool, "drop_uid": bool, "mounts": bool (a private mount
    namespace per run), "prefix": command prefix or None}; the first call tries each by running it."""
    is_root = os.geteuid() == 0
    have = lambda tool: shutil.which(tool) is not None  # noqa: E731
    drop_uid, why = is_root and have("setpriv"), "unshare is not installed"
    for mounts in (True, False) if have("unshare") else ():
        prefix = ["unshare"] + ([] if is_root else ["-r"]) + ["-n"]
        if mounts:
            prefix += ["-m", "--propagation", "private"]
        if mounts and not is_root:  # no uid to reap by: a pid namespace ends every process with the program
            prefix += ["-p", "-f", "--kill-child"]
        ok, detail = _probe(prefix, drop_uid, mounts)
        if ok:
            if not mounts:
                log.warning("Sandboxed programs get no private mount namespace here (%s): a program can leave "
                            "files in /tmp, /var/tmp and /dev/shm%s.", why,
                            "" if is_root else "; run as root or allow unprivileged user namespaces")
            return {"netns": True, "drop_uid": drop_uid, "mounts": mounts, "prefix": prefix}
        why = detail or "it failed"
    log.warning("Sandboxed programs get no network or mount namespace here (%s): a program can reach the "
                "network and leave files in /tmp, /var/tmp and /dev/shm.", why)
    return {"netns": False, "drop_uid": False, "mounts": False, "prefix": None}


def _probe(prefix: list[str], drop_uid: bool, mounts: bool) -> tuple[bool, str]:
    """Runs ``true`` (or, with ``mounts``, the private-mount setup in a scratch directory) under ``prefix``."""
    uid = _UIDS.acquire() if drop_uid and mounts else None
    cwd = tempfile.mkdtemp(prefix="codeeval-probe-")
    try:
        cmd = prefix + ["true"]
        if mounts:
            spec = mountns.spec(cwd, scratch_bytes=1 << 20, cwd_bytes=1 << 20, share=(),
                                keep_caps=[mountns.CAP_DAC_READ_SEARCH] if uid is not None else [])
            setup = mountns.SETUP + "\nimport json, sys\n_private_mounts(json.loads(sys.argv[1]))"
            cmd = prefix + (_setpriv(uid, mounts=True) if uid is not None else []) + [
                sys.executable, "-I", "-S", "-c", setup, json.dumps(spec)]
            if uid is not None:
                os.chown(cwd, uid, uid)
        done = subprocess.run(cmd, capture_output=True, timeout=30, cwd=cwd)
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return done.returncode == 0, lines[-1] if lines else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
        if uid is not None:
            _UIDS.release(uid)


class _UidPool:
    """Hands out one unprivileged uid per concurrent run; distinct between harness processes by pid."""

    def __init__(self):
        self._lock = threading.Lock()
        self._busy: set[int] = set()

    def acquire(self) -> int:
        base = _UID_BASE + (os.getpid() % 100_000) * 256
        with self._lock:
            uid = next(base + i for i in range(256) if base + i not in self._busy)
            self._busy.add(uid)
            return uid

    def release(self, uid: int) -> None:
        with self._lock:
            self._busy.discard(uid)


_UIDS = _UidPool()


def _setpriv(uid: int, mounts: bool) -> list[str]:
    # with mounts, the bootstrap makes them (CAP_SYS_ADMIN) and then drops all but dac_read_search (CAP_SETPCAP)
    caps = "-all,+dac_read_search" + (",+sys_admin,+setpcap" if mounts else "")
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps={caps}",
            f"--ambient-caps={caps}", f"--bounding-set={caps}"]


def _uid_pids(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            except (OSError, StopIteration):
                continue
            if str(uid) in uids:
                pids.append(int(entry))
    return pids


def _reap_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (repeat: a fork loop may race the first sweep)."""
    for _ in range(100):
        pids = _uid_pids(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _read_marker(fd: int, size: int = 256) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def _check_args(timeout_s: float, memory_mb: int, max_output_bytes: int, scratch_mb: int = 64) -> None:
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds.")
    if not memory_mb >= 64:
        raise ValueError(f"memory_mb={memory_mb!r} is too small for a Python interpreter; use at least 64.")
    if not max_output_bytes >= 1:
        raise ValueError(f"max_output_bytes={max_output_bytes!r} must be at least 1.")
    if not scratch_mb >= 1:
        raise ValueError(f"scratch_mb={scratch_mb!r} must be at least 1 (MiB per private tmpfs).")


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, max_output_bytes: int = 1 << 20,
                keep: Sequence[str] = (), keep_dir: str | None = None, scratch_mb: int = 64,
                share: Sequence[str] = ()) -> Result:
    """Run ``source`` (a complete program) in a fresh isolated process; see the module docstring.

    ``keep``: names of regular files the program writes in its directory that are copied to ``keep_dir``
    after the run (each is capped at ``max_output_bytes`` like the output; links are not followed).
    ``scratch_mb``: size of each private tmpfs (its working directory gets room for ``keep`` on top).
    ``share``: directories the program reads by path that a private tmpfs would hide (e.g. under /tmp);
    they stay visible, read-only."""
    _check_args(timeout_s, memory_mb, max_output_bytes, scratch_mb)
    if keep and not (keep_dir and os.path.isdir(keep_dir)):
        raise ValueError(f"keep_dir={keep_dir!r} must be an existing directory when keep={list(keep)!r} is given.")
    if isinstance(share, (str, bytes)):
        raise ValueError(f"share={share!r} must be a list of directories, e.g. [{share!r}].")
    for path in share:
        if not os.path.isdir(path):
            raise ValueError(f"share={path!r} is not an existing directory; share only directories the program reads.")
    iso = isolation()
    uid = _UIDS.acquire() if iso["drop_uid"] else None
    root = tempfile.mkdtemp(prefix="codeeval-")  # 0700, harness-private: holds input and output files
    work = os.path.join(root, "work")
    os.mkdir(work)
    nonce = secrets.token_hex(16)
    (marker_r, marker_w), (kept_r, kept_w) = os.pipe(), os.pipe()
    keep_fds = [os.open(os.path.join(root, f"kept-{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                for i in range(len(keep))]
    header = {"nonce": nonce, "marker_fd": marker_w, "kept_fd": kept_w,
              "keep": [[os.path.basename(name), fd] for name, fd in zip(keep, keep_fds)], "limits": {
        "RLIMIT_CPU": int(timeout_s) + 1, "RLIMIT_AS": memory_mb << 20,
        "RLIMIT_FSIZE": max_output_bytes + 1, "RLIMIT_CORE": 0, "RLIMIT_NOFILE": _NOFILE}}
    if uid is not None:  # the process count is per uid: only a dedicated uid makes it a per-run bound
        header["limits"]["RLIMIT_NPROC"] = _NPROC
    if iso["mounts"]:
        header["mounts"] = mountns.spec(work, scratch_bytes=scratch_mb << 20, share=share,
                                        cwd_bytes=(scratch_mb << 20) + len(keep) * (max_output_bytes + 1),
                                        keep_caps=[mountns.CAP_DAC_READ_SEARCH] if uid is not None else [])
    cmd = [sys.executable, "-I", "-B", "-c", _STUB]
    if uid is not None:
        os.chown(work, uid, uid)
        cmd = iso["prefix"] + _setpriv(uid, iso["mounts"]) + cmd
    elif iso["prefix"] is not None:
        cmd = iso["prefix"] + cmd
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    in_path, out_path = os.path.join(root, "program"), os.path.join(root, "output")
    with open(in_path, "wb") as f:
        f.write(b"%d\n" % len(_BOOT) + _BOOT + json.dumps(header).encode() + b"\n" + source.encode("utf-8", "replace"))
    start = time.monotonic()
    rc, timed_out = None, False
    try:
        with open(in_path, "rb") as fin, open(out_path, "wb") as fout:
            try:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=subprocess.STDOUT, cwd=work,
                                        env=env, pass_fds=(marker_w, kept_w, *keep_fds), start_new_session=True)
            except OSError as e:
                for fd in (marker_r, kept_r):
                    os.close(fd)
                return Result("error", f"could not launch the sandbox: {e}", "", 0.0)
            finally:
                for fd in (marker_w, kept_w, *keep_fds):
                    os.close(fd)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # stragglers too, not only the leader
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
                if uid is not None:
                    _reap_uid(uid)
        wall_s = time.monotonic() - start
        marker, kept = _read_marker(marker_r), _read_marker(kept_r, 1 << 16).split()
        size = os.path.getsize(out_path)
        with open(out_path, "rb") as f:
            output = f.read(max_output_bytes).decode("utf-8", "replace")
        for i, name in enumerate(keep):
            if str(i).encode() in kept:
                os.replace(os.path.join(root, f"kept-{i}"), os.path.join(keep_dir, os.path.basename(name)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if uid is not None:
            _UIDS.release(uid)
    if rc == _SETUP_FAILED and output.startswith("sandbox setup failed:"):
        return Result("error", output.strip()[-1000:], output, wall_s)
    if timed_out:
        return Result("timeout", f"still running after {timeout_s:g} s; killed", output, wall_s)
    if size > max_output_bytes:
        return Result("output_limit", f"output exceeded {max_output_bytes} bytes", output, wall_s)
    if rc == 0 and marker == nonce.encode():
        return Result("passed", "", output, wall_s)
    if rc == 0:
        return Result("failed", "exited with code 0 before the program finished", output, wall_s)
    reason = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    return Result("failed", f"{reason}: {output[-1000:].strip()}", output, wall_s)


def iter_many(sources: Iterable[str | dict], *, workers: int | None = None, **kwargs) -> Iterator[tuple[int, Result]]:
    """Yield ``(index, Result)`` for every source as runs finish, ``workers`` processes at a time.

    ``sources`` may be a lazy iterable: at most 2 x workers programs are held in memory at once. An item
    is a program, or a dict of ``run_program`` arguments (``source`` and any of its own ``timeout_s``,
    ``keep``, ``keep_dir``, ...) that take precedence over ``kwargs``.
    """
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be at least 1.")
    _check_args(kwargs.get("timeout_s", 10.0), kwargs.get("memory_mb", 1024), kwargs.get("max_output_bytes", 1),
                kwargs.get("scratch_mb", 64))
    isolation()  # probed (and a missing namespace reported) once, before the worker threads start
    pending = enumerate(sources)

    def submit(pool, item):
        if isinstance(item, dict):
            own = dict(item)
            return pool.submit(run_program, own.pop("source"), **{**kwargs, **own})
        return pool.submit(run_program, item, **kwargs)

    # Threads suffice: each one only waits on its child process.
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        running = {submit(pool, s): i for i, s in itertools.islice(pending, 2 * workers)}
        while running:
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                for j, s in itertools.islice(pending, 1):
                    running[submit(pool, s)] = j
                yield i, future.result()


def run_many(sources: Sequence[str], *, workers: int | None = None, **kwargs) -> list[Result]:
    """Run every source (in parallel, see ``iter_many``); results in the order of ``sources``."""
    results: list[Result | None] = [None] * len(sources)
    for i, result in iter_many(sources, workers=workers, **kwargs):
        results[i] = result
    return results
