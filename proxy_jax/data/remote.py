"""Corpora in object storage: ``config.data.path`` (and ``evaluate --data``) as a ``gs://`` URL, or any URL
that fsspec opens, read with the same random access and the same document keys as a local copy.

- Listing: a file, a folder (every object under it whose name ends with the suffix) or a glob, through
  fsspec; keys are paths relative to the folder (or to the glob's common folder), as for local files, so
  the held-out split, the shuffled order and the batches are those of the same files on local disk.
- JSONL: the index scans each file once in ``SCAN_BLOCK`` reads; reading a document is one ranged read of
  exactly its line (no read-ahead: a shuffled order never reads the next line).
- Parquet: ``pyarrow`` reads the footer and then each row group's text column chunk through
  :class:`RangedFile`, a file object whose every read is one ranged read of exactly the bytes asked for
  (Parquet readers ask for exact byte ranges; no read-ahead, no open handle). The readers keep the parsed
  footer of every file they have opened (so reopening a file costs no request) and their cache of decoded
  row groups (``proxy_jax.data.parquet``): a random read costs one ranged read per row group not cached.
- ArrayRecord (shards of ``arrayrecord`` and ``preprocessed``): the ``array_record`` library reads local files
  only, so each shard is downloaded once into a local cache folder (``PROXY_JAX_DATA_CACHE``, default
  ``~/.cache/proxy_jax/data``), named by its URL, size and modification time, and read there; a changed
  object is downloaded again.

``gs://`` needs the ``[gcs]`` extra (``gcsfs``). Object storage errors stop with one sentence naming the URL.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import threading

from proxy_jax import storage

SCAN_BLOCK = 8 << 20  # bytes per read when a JSONL file is scanned from start to end
CACHE_ENV = "PROXY_JAX_DATA_CACHE"

is_remote = storage.is_remote
_SIZES: dict[str, int] = {}  # URL -> size in bytes, from listings (saves a request per file)
_LOCAL: dict[str, str] = {}  # URL -> its downloaded copy, for this process
_DOWNLOAD = threading.Lock()


def filesystem(url: str):
    """(fsspec file system, path without the scheme) of ``url``; one sentence when it cannot be opened here (a
    missing extra, an unknown scheme: ``storage.check_usable``'s)."""
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError):
        storage.check_usable(url, "config.data.path")
        raise


def _url(fs, path: str) -> str:
    return fs.unstrip_protocol(path.rstrip("/"))


def failed(url: str, e: BaseException) -> OSError:
    """One sentence for an object storage error (its first sentence quoted) while reading ``url``."""
    reason = str(e).strip().split(". ")[0].rstrip(".")[:200]
    return OSError(f"{url} cannot be read from object storage ({type(e).__name__}: {reason}); check the URL, the "
                   "credentials and the endpoint.")


def resolve_files(path: str, suffix: str, what: str) -> tuple[list[str], str]:
    """A file, folder (every object under it ending with ``suffix``) or glob URL -> (sorted URLs, base URL)."""
    fs, p = filesystem(path)
    try:
        if fs.isfile(p):
            info = fs.info(p)
            url = _url(fs, p)
            _SIZES[url] = int(info["size"])
            return [url], url.rsplit("/", 1)[0]
        if fs.isdir(p):
            found = fs.find(p, detail=True)
            base = _url(fs, p)
            found = {k: v for k, v in found.items() if k.endswith(suffix)}
        else:
            found = fs.glob(p, detail=True)
            found = {k: v for k, v in found.items() if v.get("type") != "directory"}
            dirs = [posixpath.dirname(k.rstrip("/")) for k in found]
            base = _url(fs, posixpath.commonpath(dirs)) if dirs else ""
    except (OSError, RuntimeError) as e:
        raise failed(path, e) from e
    files = []
    for k, info in found.items():
        url = _url(fs, k)
        if info.get("size") is not None:
            _SIZES[url] = int(info["size"])
        files.append(url)
    if not files:
        raise ValueError(f"config.data.path={path!r} matches no {what} file ({suffix}); fix the path.")
    prefix = base + "/"
    files.sort(key=lambda u: u[len(prefix):] if u.startswith(prefix) else u)
    return files, base


def getsize(url: str) -> int:
    if url not in _SIZES:
        fs, p = filesystem(url)
        try:
            _SIZES[url] = int(fs.size(p))
        except (OSError, RuntimeError) as e:
            raise failed(url, e) from e
    return _SIZES[url]


def read_range(url: str, start: int, size: int) -> bytes:
    """Bytes ``[start, start + size)`` of ``url``: one ranged read."""
    fs, p = filesystem(url)
    try:
        return fs.cat_file(p, start=start, end=start + size)
    except (OSError, RuntimeError) as e:
        raise failed(url, e) from e


class RangedFile(io.RawIOBase):
    """A read-only, seekable file of an object: each ``read`` is one ranged read of exactly the bytes asked for,
    nothing is buffered or kept open (so nothing is left to close when a reader drops it)."""

    def __init__(self, url: str, size: int):
        super().__init__()
        self.url, self.size, self.pos = url, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset + (0, self.pos, self.size)[whence])
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        data = read_range(self.url, self.pos, end - self.pos)
        self.pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def open_random(url: str) -> RangedFile:
    """A seekable binary file object of ``url`` that reads exactly the ranges asked for (no read-ahead)."""
    return RangedFile(url, getsize(url))


def open_sequential(url: str):
    """A buffered binary file object of ``url`` for reading it from start to end in ``SCAN_BLOCK`` reads."""
    fs, p = filesystem(url)
    try:
        raw = fs.open(p, "rb", block_size=SCAN_BLOCK, cache_type="none")
    except (OSError, RuntimeError) as e:
        raise failed(url, e) from e
    return io.BufferedReader(raw, buffer_size=SCAN_BLOCK)


def cache_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/proxy_jax/data"))


def local_copy(url: str) -> str:
    """A local path holding ``url``'s bytes: ``url`` itself when local, else its copy in :func:`cache_dir`,
    downloaded once (and again when the object's size or modification time changed)."""
    if not is_remote(url):
        return storage.local(url)
    with _DOWNLOAD:
        if url in _LOCAL:
            return _LOCAL[url]
        fs, p = filesystem(url)
        try:
            info = fs.info(p)
        except (OSError, RuntimeError) as e:
            raise failed(url, e) from e
        version = f"{url}\0{info.get('size')}\0{info.get('mtime') or info.get('updated') or info.get('LastModified')}"
        folder = os.path.join(cache_dir(), hashlib.sha256(version.encode()).hexdigest()[:24])
        target = os.path.join(folder, posixpath.basename(p))
        if not os.path.isfile(target):
            os.makedirs(folder, exist_ok=True)
            tmp = f"{target}.part{os.getpid()}"
            try:
                fs.get_file(p, tmp)
            except (OSError, RuntimeError) as e:
                raise failed(url, e) from e
            got = os.path.getsize(tmp)
            if got != int(info["size"]):
                os.remove(tmp)
                raise OSError(f"{url} was downloaded with {got} bytes, not {info['size']}; retry, or copy the corpus "
                              "to local disk.")
            os.replace(tmp, target)  # atomic: another process downloading the same shard is harmless
        _LOCAL[url] = target
        return target
