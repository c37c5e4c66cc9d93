"""A sandboxed run's own filesystem view: a private mount namespace set up inside the run's process.

``SETUP`` is Python source that the sandbox's bootstrap runs first, inside the new mount (and network)
namespace that ``unshare`` made, while the process still holds CAP_SYS_ADMIN and CAP_SETPCAP (granted
by ``setpriv`` as root, or held as root of a fresh user namespace). ``_private_mounts(spec)``:

0. refuses to run (``OSError``) in the mount namespace of the process that wrote ``spec``;
1. makes every mount private (``MS_REC | MS_PRIVATE`` on ``/``), so nothing below propagates to the host;
2. makes the whole tree read-only (``mount_setattr`` with ``AT_RECURSIVE``; on kernels before 5.12, or
   where a system-call filter refuses it, a read-only bind remount of each mount point, keeping its
   nosuid/nodev/noexec flags);
3. mounts a fresh size-capped tmpfs (``nosuid,nodev``, ``spec["scratch_bytes"]`` bytes and
   ``INODES`` files each) on ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (those that exist), and one
   owned by the run's uid (mode 0700, ``spec["cwd_bytes"]``) on its working directory ``spec["cwd"]``;
4. binds back, read-only, the directories in ``spec["share"]`` (and the interpreter's own directories)
   that the new tmpfs mounts would hide, at the same paths;
5. changes into the working directory and drops every capability but ``spec["keep_caps"]`` from the
   effective, permitted, inheritable and bounding sets, then sets no_new_privs;
6. when a capability is kept (CAP_DAC_READ_SEARCH, so that a dropped uid can read the interpreter
   wherever it lives), installs a seccomp filter that fails ``open_by_handle_at`` (and every system call
   of another ABI) with EPERM: with that capability and an inherited descriptor on a host mount (the
   output file) it would open any inode of that filesystem writable, past the read-only view. On
   machines other than x86-64 and arm64 (no table here) this step raises, so no mount namespace is used.

It checks the result in ``/proc/self/status`` and raises ``OSError`` when anything did not take.

The mounts live as long as a process of the namespace does: when the run's processes are gone (the
sandbox kills them all), the namespace and its tmpfs contents are freed by the kernel.
"""

from __future__ import annotations

import os

INODES = 8192  # files (and directories) per private tmpfs: bounds the kernel memory of empty files
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
CAP_DAC_READ_SEARCH, CAP_SETPCAP, CAP_SYS_ADMIN = 2, 8, 21
_HOST_NS = os.readlink("/proc/self/ns/mnt") if os.path.exists("/proc/self/ns/mnt") else ""

SETUP = r'''
def _private_mounts(spec):
    # libc through _ctypes, the core of the ctypes package: importing the package builds some thirty
    # classes, about 4 ms of CPU per run; these four are all the setup needs. Calls return C ints.
    import _ctypes, os, sys

    class Byte(_ctypes._SimpleCData):
        _type_ = "B"

    class Pointer(_ctypes._SimpleCData):
        _type_ = "P"

    class Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO

    class Libc:
        _handle = _ctypes.dlopen(None, os.RTLD_NOW)

    def call(name, *args):  # -> errno, 0 on success
        return 0 if Function((name, Libc))(*args) == 0 else _ctypes.get_errno()

    def check(err, what):
        if err:
            raise OSError(err, "%s: %s" % (what, os.strerror(err)))

    def memory(*fields):  # a C struct from (value, size in bytes) pairs, native byte order
        data = bytearray(b"".join(v.to_bytes(n, sys.byteorder) for v, n in fields))
        return (Byte * len(data)).from_buffer(data)

    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
        1, 2, 4, 8, 32, 4096, 16384, 1 << 18)

    def mount(source, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        check(call("mount", enc(source), enc(target), enc(fstype), flags, enc(data)), "mount %s" % target)

    def read_only(target):
        attr = memory((1, 8), (0, 8), (0, 8), (0, 8))  # struct mount_attr: attr_set = MOUNT_ATTR_RDONLY
        err = call("syscall", 442, -100, target.encode(), 0x8000, attr, 32)  # mount_setattr(AT_FDCWD, AT_RECURSIVE)
        if err not in (38, 1):  # ENOSYS: a kernel before 5.12; EPERM: a filter that predates the call
            return check(err, "read-only %s" % target)
        import re
        with open("/proc/self/mountinfo") as f:  # space, tab, newline and backslash come as \ooo
            points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]
        for point in points:
            if point == target or point.startswith(target.rstrip("/") + "/"):
                keep = os.statvfs(point).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # same bits in ST_*
                mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)

    if os.readlink("/proc/self/ns/mnt") == spec["host_ns"]:  # never touch the harness's own mounts
        raise OSError("not in a mount namespace of its own")
    covered = sorted({os.path.realpath(p) for p in spec["scratch"] if os.path.isdir(p)}) + [spec["cwd"]]
    under = lambda p, roots: any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)
    wanted = set(spec["share"]) | {os.path.dirname(os.__file__), sys.prefix, sys.base_prefix, sys.exec_prefix}
    wanted |= {p for p in sys.path if p and os.path.isdir(p)}
    shares = []
    for path in sorted(os.path.realpath(p) for p in wanted):
        if under(path, covered) and not under(path, [s for s, _ in shares]):
            shares.append((path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))

    mount(None, "/", None, MS_REC | MS_PRIVATE)
    read_only("/")
    for path in covered[:-1]:
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV,
              "size=%d,nr_inodes=%d,mode=1777" % (spec["scratch_bytes"], spec["inodes"]))
    os.makedirs(spec["cwd"], exist_ok=True)
    mount("tmpfs", spec["cwd"], "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,nr_inodes=%d,mode=700,uid=%d,gid=%d"
          % (spec["cwd_bytes"], spec["inodes"], os.getuid(), os.getgid()))
    for path, fd in shares:
        os.makedirs(path, exist_ok=True)
        mount("/proc/self/fd/%d" % fd, path, None, MS_BIND | MS_REC)
        read_only(path)
        os.close(fd)
    os.chdir(spec["cwd"])

    keep = sum(1 << c for c in spec["keep_caps"])
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if not keep >> cap & 1:
            check(call("prctl", 24, cap, 0, 0, 0), "dropping capability %d" % cap)  # PR_CAPBSET_DROP
    low, high = keep & 0xFFFFFFFF, keep >> 32  # effective, permitted, inheritable: low words, then high
    header = memory((0x20080522, 4), (0, 4))  # _LINUX_CAPABILITY_VERSION_3, this process
    check(call("capset", header, memory(*[(low, 4)] * 3, *[(high, 4)] * 3)), "capset")
    check(call("prctl", 38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
    if keep:  # CAP_DAC_READ_SEARCH opens any inode by handle through an fd on a host mount (the output file)
        if os.uname().machine not in _SECCOMP:
            raise OSError("no seccomp table for a %s machine" % os.uname().machine)
        arch, number = _SECCOMP[os.uname().machine]
        deny, allow = 0x00050000 | 1, 0x7FFF0000  # SECCOMP_RET_ERRNO | EPERM, SECCOMP_RET_ALLOW
        program = [(0x20, 0, 0, 4), (0x15, 0, 4, arch),  # load the ABI; any other ABI: EPERM
                   (0x20, 0, 0, 0), (0x35, 2, 0, 0x40000000),  # load the number; x32 numbers: EPERM
                   (0x15, 1, 0, number), (0x06, 0, 0, allow), (0x06, 0, 0, deny)]  # open_by_handle_at: EPERM
        code = memory(*[f for op, jt, jf, k in program for f in ((op, 2), (jt, 1), (jf, 1), (k, 4))])
        fprog = memory((len(program), 2), (0, 6), (_ctypes.addressof(code), 8))  # struct sock_fprog
        check(call("prctl", 22, 2, Pointer(_ctypes.addressof(fprog)), 0, 0), "seccomp")  # SECCOMP_MODE_FILTER
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    for field in ("CapEff", "CapPrm", "CapInh", "CapBnd"):
        if int(status[field], 16) != keep:
            raise OSError("capabilities were not dropped: %s %s" % (field, status[field].strip()))
    if keep and status["Seccomp"].strip() != "2":
        raise OSError("the seccomp filter is not in place")

_SECCOMP = {"x86_64": (0xC000003E, 304), "aarch64": (0xC00000B7, 265)}  # AUDIT_ARCH_*, __NR_open_by_handle_at
'''


def spec(cwd: str, *, scratch_bytes: int, cwd_bytes: int, share, keep_caps) -> dict:
    """The ``_private_mounts`` argument for a run whose working directory is ``cwd``."""
    return {"cwd": os.path.realpath(cwd), "scratch": list(SCRATCH), "scratch_bytes": int(scratch_bytes),
            "cwd_bytes": int(cwd_bytes), "inodes": INODES, "share": [os.path.realpath(p) for p in share],
            "keep_caps": sorted(keep_caps), "host_ns": _HOST_NS}
