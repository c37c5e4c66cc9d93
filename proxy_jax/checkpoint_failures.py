"""How a checkpoint's failures are told apart and reported once (``proxy_jax.checkpoint`` uses them).

* damage (bad bytes, missing files inside a step) is what may set a step aside; a permission or path error
  (:func:`_access_reason`) and a programming error (:func:`_is_bug`) are not;
* an I/O failure of a write (:func:`_io_reason`: a full disk, permissions), also through TensorStore's and
  Orbax's wrappers, becomes one sentence;
* the libraries' own reports around that sentence are silenced: their log records while a checkpoint is read
  or written (:func:`quiet_libraries`, :class:`_DropLibraryErrors`), and, once a failure is reported, the late
  echoes of the tasks and coroutines Orbax abandoned (:func:`_report_once`), so the sentence is the last thing
  a user reads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys


# Failures that say nothing about a checkpoint's bytes: a programming error is raised as it is.
_BUGS = (TypeError, AttributeError, NameError, ImportError, AssertionError, NotImplementedError, RecursionError)
_ACCESS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOTDIR: "a path is not a folder",
           errno.ENAMETOOLONG: "a path is too long", errno.ELOOP: "a path loops through symbolic links"}


def _access_reason(e: BaseException) -> str | None:
    """Why reading failed when it is not the checkpoint's damage: a permission or a path error anywhere in
    ``e``'s chain (``OSError``, or TensorStore's and Orbax's error text), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _ACCESS:
            return _ACCESS[e.errno]
        text = str(e)
        if "Permission denied" in text or "PERMISSION_DENIED" in text:
            return "permission denied"
        if "should be absolute" in text:
            return "the path is not absolute"
        e = e.__cause__ or e.__context__
    return None


def _is_bug(e: BaseException) -> bool:
    """True when ``e`` or an exception it was raised from (``raise ... from``) is a programming error."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, _BUGS):
            return True
        e = e.__cause__
    return False


@contextlib.contextmanager
def quiet_libraries():
    """Silences absl/Orbax log records (tracebacks of a failed restore) below CRITICAL for the block."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "jax._src.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_IO_WORDS = ("No space left on device", "Permission denied", "Read-only file system", "Disk quota exceeded")


def _io_reason(e: BaseException) -> str | None:
    """Why a write failed, when an exception in ``e``'s cause/context chain is an I/O failure: an
    ``OSError``, or TensorStore's error text (``... [os_error_code='28']``, raised as ``ValueError``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.strerror or os.strerror(e.errno)
        text = str(e)
        code = re.search(r"os_error_code='(\d+)'", text)
        if code:
            return os.strerror(int(code[1]))
        for words in _IO_WORDS:
            if words in text:
                return words
        e = e.__cause__ or e.__context__
    return None


class _DropLibraryErrors(logging.Filter):
    """Drops Orbax's own error records (tracebacks from its background save threads): a failed save is
    raised by the next save, ``wait`` or ``close`` as one sentence."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _drop_closed_loop_callbacks(previous):
    """An unraisable-exception hook that drops TensorStore's late callbacks into the event loop of a save
    Orbax already abandoned (``RuntimeError: Event loop is closed`` after a failed write)."""

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        previous(unraisable)

    return hook


_REPORTED: set[str] = set()  # checkpoint folders whose failure this process has reported in one sentence


def _about_reported(e: BaseException | None) -> bool:
    """True when ``e`` is an I/O failure or names a checkpoint folder whose failure was reported."""
    if e is None:
        return False
    text = str(e)
    return _io_reason(e) is not None or any(directory in text for directory in _REPORTED)


class _DropAbandonedTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records of Orbax's and TensorStore's abandoned tasks
    (printed when they are garbage-collected, often at exit) once their failure has been reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not ("never retrieved" in record.getMessage() and _about_reported(exc))


def _report_once(directory: str) -> None:
    """After a failure under ``directory`` was raised as one sentence, the libraries' late echoes of it (tasks
    never retrieved, coroutines closed with an error) are not printed after that sentence."""
    if not _REPORTED:
        logging.getLogger("asyncio").addFilter(_DropAbandonedTasks())
        sys.unraisablehook = _drop_reported_coroutines(sys.unraisablehook)
    _REPORTED.add(directory)


def _drop_reported_coroutines(previous):
    """An unraisable-exception hook that drops coroutines closed with an error about a reported failure
    ("Exception ignored in: <coroutine ...>" with TensorStore's spec of the array it was reading)."""

    def hook(unraisable):
        if repr(unraisable.object).startswith("<coroutine") and _about_reported(unraisable.exc_value):
            return
        previous(unraisable)

    return hook
