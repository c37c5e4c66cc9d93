"""The sandbox's private mount namespace: what a program writes through libc itself (ctypes, past the
prelude) vanishes with the run, the host's files stay as they were, and the tmpfs caps bind."""

import glob
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest

from proxy_jax.codeeval import mountns, sandbox

needs_mounts = pytest.mark.skipif(
    not sandbox.isolation()["mounts"],
    reason="no private mount namespace on this machine (needs root with unshare and setpriv, or user namespaces)")

# A program's libc, with the helpers every program below uses: each prints one JSON line per attempt.
LIBC = textwrap.dedent("""
    import ctypes, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def report(what, ret):
        print(json.dumps([what, ret, ctypes.get_errno() if ret < 0 else 0]), flush=True)

    def create(path, n_bytes, chunk=1 << 20):
        fd = libc.open(path.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if fd < 0:
            return report("create " + path, fd)
        written, buf = 0, b"x" * chunk
        while written < n_bytes:
            n = libc.write(fd, buf, min(chunk, n_bytes - written))
            if n < 0:
                libc.close(fd)
                return report("write " + path, n)
            written += n
        report("write " + path, libc.close(fd))
""")


def attempts(result):
    return {what: errno for what, _, errno in (json.loads(line) for line in result.output.splitlines()
                                               if line.startswith("["))}


@needs_mounts
def test_ctypes_files_vanish_with_the_run_and_host_files_stay(tmp_path):
    tag = "codeeval-test-" + secrets.token_hex(6)
    host_sentinel = os.path.join("/tmp", tag + "-sentinel")  # in the host's /tmp, hidden from the program
    with open(host_sentinel, "w") as f:
        f.write("keep me")
    shared = tmp_path / "shared"  # visible to the program (share=), read-only, although world-writable
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "data.txt").write_text("keep me too")
    program = LIBC + textwrap.dedent(f"""
        for place in ("/tmp", "/var/tmp", "/dev/shm", os.getcwd()):
            for i in range(50):  # 50 x 1 MB in each place, as a hostile completion did
                create(f"{{place}}/{tag}-{{i}}", 1 << 20)
            report("exists " + place, 0 if os.path.getsize(f"{{place}}/{tag}-49") == 1 << 20 else -1)
        report("unlink host sentinel", libc.unlink(b"{host_sentinel}"))
        report("truncate host sentinel", libc.open(b"{host_sentinel}", os.O_WRONLY | os.O_TRUNC))
        shared = "{shared}"
        report("open shared O_TRUNC", libc.open((shared + "/data.txt").encode(), os.O_WRONLY | os.O_TRUNC))
        report("unlink shared", libc.unlink((shared + "/data.txt").encode()))
        report("rename shared", libc.rename((shared + "/data.txt").encode(), (shared + "/moved").encode()))
        report("create in shared", libc.open((shared + "/new").encode(), os.O_WRONLY | os.O_CREAT, 0o644))
        report("create in /run/lock", libc.open(b"/run/lock/{tag}", os.O_WRONLY | os.O_CREAT, 0o644))
        print("cwd", os.getcwd())
    """)
    result = sandbox.run_program(program, timeout_s=60.0, share=[str(shared)])
    assert result.passed, result.detail
    got = attempts(result)
    for place in ("/tmp", "/var/tmp", "/dev/shm"):
        assert got[f"write {place}/{tag}-49"] == 0 and got["exists " + place] == 0, got
    assert got["unlink host sentinel"] == got["truncate host sentinel"] == 2  # ENOENT: the host's /tmp is hidden
    erofs = 30
    for what in ("open shared O_TRUNC", "unlink shared", "rename shared", "create in shared", "create in /run/lock"):
        assert got[what] == erofs, (what, got)
    cwd = next(line.split(" ", 1)[1] for line in result.output.splitlines() if line.startswith("cwd "))
    assert not os.path.exists(cwd)
    try:
        with open(host_sentinel) as f:
            assert f.read() == "keep me"
        assert (shared / "data.txt").read_text() == "keep me too"
        assert sorted(os.listdir(shared)) == ["data.txt"]
        left = [p for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock") for p in glob.glob(f"{d}/{tag}*")]
        assert left == [host_sentinel], left
    finally:
        os.remove(host_sentinel)


@needs_mounts
def test_writes_past_the_tmpfs_cap_fail_inside_the_run():
    tag = "codeeval-test-" + secrets.token_hex(6)
    program = LIBC + textwrap.dedent(f"""
        for place in ("/tmp", "/dev/shm", os.getcwd()):
            create(f"{{place}}/{tag}", 8 << 20, chunk=1 << 16)  # 8 MB into a 2 MB tmpfs
        for i in range(10000):  # and more files than a tmpfs holds
            fd = libc.open(f"/var/tmp/{tag}-{{i}}".encode(), os.O_WRONLY | os.O_CREAT, 0o644)
            if fd < 0:
                report("many files", fd)
                break
            libc.close(fd)
        else:
            report("many files", 0)
    """)
    result = sandbox.run_program(program, timeout_s=60.0, scratch_mb=2, max_output_bytes=64 << 20)
    assert result.passed, result.detail
    got, enospc = attempts(result), 28
    assert got[f"write /tmp/{tag}"] == enospc and got[f"write /dev/shm/{tag}"] == enospc, got
    assert any(what.startswith("write /") and what.endswith(f"/work/{tag}") and errno == enospc
               for what, errno in got.items()), got  # the working directory's tmpfs
    assert got["many files"] == enospc
    assert not [p for d in ("/tmp", "/var/tmp", "/dev/shm") for p in glob.glob(f"{d}/{tag}*")]


@needs_mounts
def test_the_program_cannot_undo_the_mounts():
    program = LIBC + textwrap.dedent("""
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        print("caps", *(status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")))
        MS_REMOUNT, MS_BIND = 32, 4096
        report("umount /tmp", libc.umount2(b"/tmp", 2))  # MNT_DETACH
        report("remount / writable", libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None))
        report("new tmpfs", libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))

        class Handle(ctypes.Structure):
            _fields_ = [("size", ctypes.c_uint), ("type", ctypes.c_int), ("bytes", ctypes.c_ubyte * 128)]
        handle, mount_id = Handle(128), ctypes.c_int()
        libc.name_to_handle_at(-100, b"/", ctypes.byref(handle), ctypes.byref(mount_id), 0)
        # stdout is a file on a host mount: with it, a handle would open "/" there, writable
        report("open_by_handle_at", libc.open_by_handle_at(1, ctypes.byref(handle), os.O_RDONLY | os.O_DIRECTORY))
    """)
    result = sandbox.run_program(program)
    assert result.passed, result.detail
    caps = next(line.split()[1:] for line in result.output.splitlines() if line.startswith("caps "))
    expected = "0000000000000004" if sandbox.isolation()["drop_uid"] else "0000000000000000"  # dac_read_search
    assert caps == [expected, expected, expected, "1"]
    got, eperm = attempts(result), 1
    assert got == {"umount /tmp": eperm, "remount / writable": eperm, "new tmpfs": eperm, "open_by_handle_at": eperm}


def test_kept_files_leave_the_run(tmp_path):
    program = textwrap.dedent("""
        import os
        open("out.bin", "wb").write(bytes(range(256)) * 1000)
        open("empty.txt", "w").close()
        os.symlink("out.bin", "link.txt")
    """)
    result = sandbox.run_program(program, keep=["out.bin", "empty.txt", "link.txt", "missing.txt"],
                                 keep_dir=str(tmp_path))
    assert result.passed, result.detail
    assert sorted(os.listdir(tmp_path)) == ["empty.txt", "out.bin"]  # no link followed, nothing made up
    assert (tmp_path / "out.bin").read_bytes() == bytes(range(256)) * 1000
    assert (tmp_path / "empty.txt").read_bytes() == b""


def test_without_a_mount_namespace_the_run_says_so_once(monkeypatch, caplog):
    sandbox.isolation.cache_clear()
    probes = []

    def probe(prefix, drop_uid, mounts):
        probes.append(mounts)
        return (not mounts), "mount: permission denied"

    monkeypatch.setattr(sandbox, "_probe", probe)
    try:
        with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
            iso = sandbox.isolation()
            assert sandbox.isolation() is iso
            result = sandbox.run_program("import os\nprint(len(os.listdir('/tmp')) >= 0)")
        assert iso["mounts"] is False and probes == [True, False]
        assert result.passed and result.output.strip() == "True"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "no private mount namespace" in warnings[0]
        assert "permission denied" in warnings[0]
    finally:
        sandbox.isolation.cache_clear()


def test_bad_scratch_and_share_are_named(tmp_path):
    with pytest.raises(ValueError, match="scratch_mb=0"):
        sandbox.run_program("pass", scratch_mb=0)
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="share="):
        sandbox.run_program("pass", share=[missing])
    with pytest.raises(ValueError, match="must be a list"):
        sandbox.run_program("pass", share=str(tmp_path))


@needs_mounts
def test_a_failed_setup_is_an_error_not_a_program_failure(monkeypatch):
    assert sandbox.isolation()["mounts"]  # probed with the real setup, before the spec is spoilt
    real = sandbox.mountns.spec

    def unmountable(cwd, **kwargs):  # a working directory that cannot be made read-write anywhere
        return {**real(cwd, **kwargs), "cwd": "/proc/self/no-such-directory"}

    monkeypatch.setattr(sandbox.mountns, "spec", unmountable)
    result = sandbox.run_program("print('never runs')")
    assert result.status == "error" and result.detail.startswith("sandbox setup failed:"), result
    assert "never runs" not in result.output


def test_the_setup_refuses_the_harness_own_namespace(tmp_path):
    # Run unprivileged, so that even a broken check could not touch this machine's mounts.
    spec = mountns.spec(str(tmp_path), scratch_bytes=1 << 20, cwd_bytes=1 << 20, share=(), keep_caps=[])
    setup = mountns.SETUP + "\nimport json, sys\n_private_mounts(json.loads(sys.argv[1]))"
    cmd = [sys.executable, "-I", "-S", "-c", setup, json.dumps(spec)]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running the setup unprivileged as root needs setpriv")
        caps = "-all,+dac_read_search"
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps={caps}",
               f"--ambient-caps={caps}", f"--bounding-set={caps}"] + cmd
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "OSError: not in a mount namespace of its own"
