"""Files of a workdir wherever it lives: a local folder, or object storage (``gs://``, or any URL that
``etils.epath`` / fsspec opens), so a TPU pod can keep its runs in a bucket.

Local paths go through ``os`` exactly as before; URLs through ``etils.epath`` (``gs://`` needs the
``[gcs]`` extra: ``gcsfs``). Orbax reads and writes checkpoints at such URLs itself.

What object storage cannot do, and how this module copes:
* no appends: :func:`append_text` reads the object and writes it back whole (the workdir's small logs only);
* no atomic rename of a folder: only single objects are replaced, and each object write is atomic;
* no file locks: ``workdir.lock`` can only write who holds the workdir and check for another live holder
  first; two processes starting within the same second can both pass. Keep one writer per workdir
  (a TPU pod's process 0 takes it).
"""

from __future__ import annotations

import os
import shutil
from typing import Iterator

from etils import epath


def is_remote(path) -> bool:
    """True for a URL (``scheme://...``) rather than a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


def local(path) -> str:
    """A local path (``file://`` prefix removed); a URL unchanged."""
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


def check_usable(path) -> None:
    """One sentence when ``path`` is a URL this installation cannot open (a missing extra, an unknown scheme)."""
    path = str(path)
    if not is_remote(path):
        return
    scheme = path.split("://", 1)[0]
    if scheme == "gs":
        try:
            import gcsfs  # noqa: F401
        except ImportError:
            raise ValueError(f"--workdir={path} is on Google Cloud Storage, which needs gcsfs: install "
                             "proxy_jax with the gcs extra (pip install 'proxy_jax[gcs]').") from None
        return
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise ValueError(f"--workdir={path}: cannot open {scheme}:// URLs here ({e}); use a local folder or gs://.") \
            from None


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
