"""The source the sandboxed interpreter runs (compiled once by ``sandbox``): one bootstrap per program.

It reads one JSON header line and the program from stdin (after its own marshalled code, which the
interpreter's ``-c`` stub read), makes the private mounts when the header
asks for them (``mountns``; exit code 125 with a "sandbox setup failed:" line when they fail), sets the
rlimits, installs the guard prelude (see ``sandbox``'s docstring: it turns accidents into clean
failures and is no security boundary), runs the program, copies the files the harness keeps into the
files behind their descriptors (noting each index on the ``kept_fd`` pipe), and last writes the nonce
to the marker pipe.
"""

from __future__ import annotations

from proxy_jax.codeeval import mountns

SOURCE = mountns.SETUP + r'''
import functools, json, os, resource, stat, sys
_hdr = json.loads(sys.stdin.buffer.readline())
_src = sys.stdin.buffer.read().decode("utf-8", "replace")
_null = os.open(os.devnull, os.O_RDONLY); os.dup2(_null, 0); os.close(_null)
if "mounts" in _hdr:
    try:
        _private_mounts(_hdr["mounts"])
    except Exception as _e:
        sys.stderr.write("sandbox setup failed: %s\n" % _e); sys.stderr.flush(); os._exit(125)
del _private_mounts
for _name, _v in _hdr["limits"].items():
    _lim = getattr(resource, _name)
    try:
        resource.setrlimit(_lim, (_v, _v))
    except (ValueError, OSError):
        pass

def _guard(root):
    import builtins, io, shutil, socket, subprocess
    try:
        import _posixsubprocess
    except ImportError:
        _posixsubprocess = None
    realpath, sep, fspath = os.path.realpath, os.sep, os.fspath

    def inside(path):
        try:
            p = realpath(fspath(path)) if not isinstance(path, int) else root
        except TypeError:
            return False
        return p == root or p.startswith(root + sep)

    def refuse(name):
        def blocked(*args, **kwargs):
            raise PermissionError(name + " is disabled in the sandbox")
        return blocked

    def confine(name, fn, n_paths=1):
        def checked(*args, **kwargs):
            for path in args[:n_paths]:
                if not inside(path):
                    raise PermissionError(name + " outside the sandbox directory is disabled")
            return fn(*args, **kwargs)
        return checked

    for name in ("fork", "forkpty", "vfork", "posix_spawn", "posix_spawnp", "system", "popen",
                 "kill", "killpg", "setsid", "setpgid", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle",
                 "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "plock"):
        if hasattr(os, name):
            setattr(os, name, refuse("os." + name))
    subprocess.Popen = refuse("subprocess.Popen")
    if _posixsubprocess is not None:
        _posixsubprocess.fork_exec = refuse("fork_exec")
    for name in ("remove", "unlink", "rmdir", "removedirs", "chmod", "chown", "lchown", "truncate",
                 "mkfifo", "mknod"):
        if hasattr(os, name):
            setattr(os, name, confine("os." + name, getattr(os, name)))
    for name in ("rename", "renames", "replace", "link", "symlink"):
        setattr(os, name, confine("os." + name, getattr(os, name), n_paths=2))
    shutil.rmtree = confine("shutil.rmtree", shutil.rmtree)
    shutil.move = confine("shutil.move", shutil.move, n_paths=2)

    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    os_open, io_open = os.open, io.open

    def safe_os_open(path, flags, *args, **kwargs):
        if flags & writes and not inside(path):
            raise PermissionError("writing outside the sandbox directory is disabled")
        return os_open(path, flags, *args, **kwargs)

    def safe_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError("writing outside the sandbox directory is disabled")
        return io_open(file, mode, *args, **kwargs)

    os.open = safe_os_open
    builtins.open = io.open = safe_open
    for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
        if hasattr(socket, name):
            setattr(socket, name, refuse("socket." + name))

_marker_fd, _nonce, _write, _exit = _hdr["marker_fd"], _hdr["nonce"].encode(), os.write, os._exit

def _keep_files(root, keep, kept_fd, open=os.open, fstat=os.fstat, sendfile=os.sendfile, close=os.close,
                join=os.path.join, is_file=stat.S_ISREG, flags=os.O_RDONLY | os.O_NOFOLLOW):
    # copies each kept file (a regular file, links not followed) into the harness's file behind its fd;
    # the functions are bound here, before the program runs and could replace them
    for i, (name, fd) in enumerate(keep):
        try:
            src = open(join(root, name), flags)
        except OSError:
            continue
        try:
            if is_file(fstat(src).st_mode):
                offset = 0
                while (n := sendfile(fd, src, offset, 1 << 24)) > 0:
                    offset += n
                _write(kept_fd, b"%d " % i)
        except OSError:
            pass
        finally:
            close(src)

_keep = functools.partial(_keep_files, os.path.realpath(os.getcwd()), _hdr["keep"], _hdr["kept_fd"])
_guard(os.path.realpath(os.getcwd()))
_code = compile(_src, "<program>", "exec")
del _hdr, _src, _guard, _keep_files
try:
    exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
finally:
    _keep()
sys.stdout.flush()
sys.stderr.flush()
_write(_marker_fd, _nonce)
'''
