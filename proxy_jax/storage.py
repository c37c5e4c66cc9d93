"""Files of a workdir wherever it lives: a local folder, or object storage (``gs://``, or any URL that
``etils.epath`` / fsspec opens), so a TPU pod can keep its runs in a bucket.

Every path a user types enters through :func:`resolve` (commands and library entry points call it once):
a local path is made absolute (``~`` expanded, ``file://`` removed), a URL is kept; :func:`check_usable`
then refuses, in one sentence, a URL this installation cannot open or whose endpoint cannot be reached.

Local paths go through ``os`` exactly as before; URLs through ``etils.epath`` (``gs://`` needs the
``[gcs]`` extra: ``gcsfs``). Orbax reads and writes checkpoints at such URLs itself.

What object storage cannot do, and how this module copes:
* no appends: :func:`append_text` reads the object and writes it back whole (the workdir's small logs only);
* no atomic rename of a folder: only single objects are replaced, and each object write is atomic;
* writers that only write local files (ArrayRecord, safetensors): :func:`staged` gives them a local folder
  standing for the URL, uploaded when they finish;
* no file locks: ``workdir.lock`` can only write who holds the workdir and check for another live holder
  first; two processes starting within the same second can both pass. Keep one writer per workdir
  (a TPU pod's process 0 takes it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import tempfile
import urllib.parse
from typing import Iterator

from etils import epath


def is_remote(path) -> bool:
    """True for a URL (``scheme://...``) rather than a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


def local(path) -> str:
    """A local path (``file://`` prefix removed); a URL unchanged."""
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


def resolve(path):
    """The one form of a path a user typed: a URL unchanged; a local path (``file://`` removed, ``~`` expanded)
    made absolute against the current folder, symlinks kept. Commands and library entry points call it where a
    path enters, so nothing below them sees a relative path (Orbax refuses one, and the current folder may
    change). ``None`` and ``""`` (unset) are returned as they are."""
    if path is None:
        return None
    path = local(path)
    if not path or is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


# Config keys that hold a local path or URL (``data.path`` only for sources read from files).
PATH_KEYS = (("data", "path"), ("data", "tfds_data_dir"), ("proxy", "m1_workdir"), ("proxy", "model_path"))


def resolve_config_paths(config) -> None:
    """Makes the path keys of a config (:data:`PATH_KEYS`) absolute in place (:func:`resolve`); ``data.path``
    of the ``tfds`` source is a dataset name and stays as it is. Recorded values are then absolute too."""
    for section, key in PATH_KEYS:
        if section not in config or key not in config[section]:
            continue
        if (section, key) == ("data", "path") and str(config.data.get("source", "")) == "tfds":
            continue
        value = config[section][key]
        if isinstance(value, str) and value:
            config[section][key] = resolve(value)


def check_usable(path, flag: str = "--workdir") -> None:
    """One sentence (naming ``flag``) when ``path`` is a URL this installation cannot open (a missing extra, an
    unknown scheme)."""
    path = str(path or "")
    if not is_remote(path):
        return
    scheme = path.split("://", 1)[0]
    if scheme == "gs":
        try:
            import gcsfs  # noqa: F401
        except ImportError:
            raise ValueError(f"{flag}={path} is on Google Cloud Storage, which needs gcsfs: install "
                             "proxy_jax with the gcs extra (pip install 'proxy_jax[gcs]').") from None
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or GCS_ENDPOINT
        reason = _unreachable(endpoint)
        if reason:  # gcsfs would retry with back-off for about a minute, logging each attempt
            raise ValueError(f"{flag}={path}: cannot reach Google Cloud Storage at {endpoint} ({reason}); check the "
                             "network and the endpoint (STORAGE_EMULATOR_HOST), and the credentials (gcloud auth "
                             "application-default login, or GOOGLE_APPLICATION_CREDENTIALS).")
        return
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{flag}={path}: cannot open {scheme}:// URLs here ({e}); use a local folder or gs://.") \
            from None


GCS_ENDPOINT = "https://storage.googleapis.com"
PROBE_TIMEOUT_S = 5.0


@functools.lru_cache(maxsize=None)
def _unreachable(endpoint: str) -> str | None:
    """Why a TCP connection to ``endpoint`` fails within :data:`PROBE_TIMEOUT_S` (a name that does not resolve,
    a refused or timed-out connection), or None when it opens. Behind an HTTP(S) proxy nothing is probed."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None
    parts = urllib.parse.urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None


def join(base, *parts: str) -> str:
    base = local(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def _p(path) -> epath.Path:
    return epath.Path(local(path))


def exists(path) -> bool:
    return _p(path).exists() if is_remote(path) else os.path.exists(local(path))


def isfile(path) -> bool:
    return _p(path).is_file() if is_remote(path) else os.path.isfile(local(path))


def isdir(path) -> bool:
    return _p(path).is_dir() if is_remote(path) else os.path.isdir(local(path))


def listdir(path) -> list[str]:
    if is_remote(path):
        return sorted(p.name for p in _p(path).iterdir()) if _p(path).exists() else []
    return sorted(os.listdir(local(path)))


def makedirs(path) -> None:
    if is_remote(path):
        _p(path).mkdir(parents=True, exist_ok=True)  # object storage has no folders: a no-op there
    else:
        os.makedirs(local(path), exist_ok=True)


def read_bytes(path) -> bytes:
    if is_remote(path):
        return _p(path).read_bytes()
    with open(local(path), "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Replaces ``path`` whole: a temporary file renamed over it locally, one object write remotely."""
    if is_remote(path):
        _p(path).write_bytes(data)
        return
    path = local(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def append_text(path, text: str) -> None:
    """Appends to a local file; rewrites the object with ``text`` added on object storage."""
    if is_remote(path):
        old = read_text(path) if exists(path) else ""
        write_text(path, old + text)
        return
    with open(local(path), "a", encoding="utf-8") as f:
        f.write(text)


def open_append(path):
    """A local text file opened for appending row by row (object storage has no appends: a writer there keeps
    its rows and rewrites the object, see :func:`append_text`)."""
    if is_remote(path):
        raise ValueError(f"{path}: object storage cannot append; keep the rows and write the object whole.")
    return open(local(path), "a", encoding="utf-8")


def copy(src, dst) -> None:
    if is_remote(src) or is_remote(dst):
        write_bytes(dst, read_bytes(src))
    else:
        shutil.copyfile(local(src), local(dst))


def remove(path) -> None:
    if is_remote(path):
        _p(path).unlink(missing_ok=True)
    elif os.path.exists(local(path)):
        os.remove(local(path))


def rmtree(path) -> None:
    if is_remote(path):
        if _p(path).exists():
            _p(path).rmtree()
    else:
        shutil.rmtree(local(path), ignore_errors=True)


def move(src, dst) -> None:
    """Moves a file or folder (on object storage: copies every object, then deletes the originals)."""
    if is_remote(src):
        if _p(src).is_file():
            _p(src).rename(_p(dst))
        else:
            _copy_tree(_p(src), _p(dst))
            _p(src).rmtree()
    else:
        shutil.move(local(src), local(dst))


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
    for item in _walk(src):
        target = dst / item.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.read_bytes())


def _walk(root: epath.Path) -> Iterator[epath.Path]:
    for item in root.iterdir():
        if item.is_dir():
            yield from _walk(item)
        else:
            yield item


def download_tree(url: str, folder: str) -> dict[str, tuple[int, int]]:
    """Copies every object under ``url`` into local ``folder``; returns ``{relative path: (size, mtime_ns)}``
    of what it wrote (what :func:`upload_tree` compares against)."""
    got = {}
    root = _p(url)
    if not root.exists():
        return got
    for item in _walk(root):
        rel = str(item.relative_to(root))
        target = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(item.read_bytes())
        st = os.stat(target)
        got[rel] = (st.st_size, st.st_mtime_ns)
    return got


def upload_tree(folder: str, url: str, unchanged: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Copies local ``folder``'s files to ``url`` (each one object write), skipping those ``unchanged`` lists
    with the same size and time and files still being written (``*.tmp*``); deletes the objects of
    ``unchanged`` whose file is gone. Returns the relative paths uploaded."""
    unchanged = unchanged or {}
    sent, present = [], set()
    for dirpath, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if ".tmp" in name:
                continue
            present.add(rel)
            st = os.stat(path)
            if unchanged.get(rel) == (st.st_size, st.st_mtime_ns):
                continue
            with open(path, "rb") as f:
                write_bytes(join(url, rel), f.read())
            sent.append(rel)
    for rel in sorted(set(unchanged) - present):
        remove(join(url, rel))
    return sent


@contextlib.contextmanager
def staged(path: str, *, download: bool = True, keep_partial: bool = True):
    """A local folder standing for ``path``, for writers that only write local files: ``path`` itself when it
    is local; for a URL, a temporary folder (holding the objects already there, when ``download``) whose new
    and changed files are uploaded when the block ends (also when it ends by an error, with ``keep_partial``:
    finished files are kept, so a rerun resumes), and which is then removed: nothing stays on local disk."""
    if not is_remote(path):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="proxy_jax-staged-")
    try:
        before = download_tree(path, folder) if download else {}
        try:
            yield folder
        except BaseException:
            if keep_partial:
                upload_tree(folder, path, before)
            raise
        upload_tree(folder, path, before)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
