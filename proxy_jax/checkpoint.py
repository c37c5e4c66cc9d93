"""Checkpoints: train state and the Grain iterator state saved together, in one Orbax step.

* ``CheckpointManager`` with async saves and keep-N;
* saving is idempotent: a step already on disk is kept (a second save of it is a no-op), unless that
  step failed to restore, in which case it is set aside under ``<dir>.unreadable/`` and written anew;
* resume from the newest step that restores: the train state is restored first, newest step first, and
  only then the data iterator of the step that loaded (a failed attempt never moves the iterator); each
  skipped step is one warning line (the libraries' tracebacks are silenced);
* a failed write (full disk, permissions) removes Orbax's temporary directories and raises
  :class:`CheckpointWriteError`, one sentence;
* a save on SIGTERM (preemption) and on Ctrl-C: :class:`PreemptionGuard` turns the signal into a flag
  the loop polls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from proxy_jax import interrupts
from proxy_jax.data import elastic

log = logging.getLogger(__name__)


TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step still being written


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, permissions); the message says which and what to do."""


class UnreadableCheckpointsError(RuntimeError):
    """Every checkpoint of a directory failed to restore."""


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


class Checkpointer:
    """Saves and restores ``(train_state, data_iterator)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.directory = str(directory)
        self.unreadable: list[int] = []  # steps that failed to restore in this process
        self._filter = _DropLibraryErrors()
        logging.getLogger("absl").addFilter(self._filter)
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._hook = _drop_closed_loop_callbacks(sys.unraisablehook)
        with quiet_libraries():
            self.manager = ocp.CheckpointManager(directory, options=options)

    def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None, *, force: bool = False) -> bool:
        """Saves step ``step``; a step already on disk is left as it is (returns False), unless it failed to
        restore, in which case it is set aside and replaced."""
        if step in self.steps():
            if step not in self.unreadable:
                return False
            self.set_aside([step])
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = _data_save_args(data_iter)
        try:
            with quiet_libraries():
                return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001 - turned into one sentence when it is an I/O failure
            self._write_failed(e, step)

    def _write_failed(self, e: BaseException, step: int | None):
        reason = _io_reason(e)
        if reason is None:
            raise e
        self.remove_temporary()
        when = f" (by step {step})" if step is not None else ""  # async: the failed save may be an earlier one
        raise CheckpointWriteError(
            f"Could not write a checkpoint under {self.directory}{when}: {reason}; free disk space or fix the "
            "permissions, then run the same command to resume from the newest complete checkpoint.") from None

    def remove_temporary(self) -> list[str]:
        """Deletes Orbax's half-written step directories (``*.orbax-checkpoint-tmp*``); only the run that
        owns the directory may call this (a reader could remove a save in progress)."""
        removed = []
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return removed
        for name in os.listdir(self.directory):
            if TMP_SUFFIX in name:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
                removed.append(name)
        return removed

    def set_aside(self, steps: list[int]) -> list[str]:
        """Moves unreadable steps to ``<directory>.unreadable/`` (kept for inspection, out of Orbax's sight)."""
        moved = []
        if jax.process_index() == 0:
            dest_root = self.directory.rstrip("/") + ".unreadable"
            os.makedirs(dest_root, exist_ok=True)
            for step in steps:
                src = os.path.join(self.directory, str(step))
                if not os.path.exists(src):
                    continue
                dest, k = os.path.join(dest_root, str(step)), 1
                while os.path.exists(dest):
                    dest, k = os.path.join(dest_root, f"{step}.{k}"), k + 1
                shutil.move(src, dest)
                moved.append(dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("proxy_jax.checkpoint.set_aside")
        self.unreadable = [s for s in self.unreadable if s not in steps]
        self.manager.reload()
        return moved

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_state(self, abstract_state: Any, step: int | None = None) -> tuple[int | None, Any]:
        """The train state of the newest step (or ``step``) that restores: ``(step, state)`` or
        ``(None, None)``; steps that fail are logged in one line each and listed in ``self.unreadable``.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (from ``jax.eval_shape``):
        arrays come back sharded as the running mesh wants, whatever mesh wrote them.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for s in candidates:
            try:
                with quiet_libraries():
                    restored = self.manager.restore(
                        s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
            except Exception as e:  # noqa: BLE001 - any failure means "this step is unusable"
                self._skip(s, e)
                continue
            return s, restored["state"]
        return None, None

    def restore_data(self, step: int, data_iter: grain.DatasetIterator) -> bool:
        """Moves ``data_iter`` to its saved position at ``step``; False (iterator untouched) if that fails."""
        try:
            with quiet_libraries():
                self.manager.restore(step, args=ocp.args.Composite(data=_data_restore_args(data_iter)))
        except elastic.DataLayoutError:
            raise  # the run cannot continue this data stream: an older step would not either
        except Exception as e:  # noqa: BLE001
            self._skip(step, e)
            return False
        return True

    def _skip(self, step: int, e: BaseException) -> None:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        log.warning("Checkpoint step %d in %s could not be restored (%s%s); trying an older one.",
                    step, self.directory, type(e).__name__, f": {first}" if first else "")
        if step not in self.unreadable:
            self.unreadable.append(step)

    def restore(self, abstract_state: Any, data_iter: grain.DatasetIterator | None, step: int | None = None):
        """Restores the newest step (or ``step``) whose state and data iterator both load: the state first,
        then the iterator of that step. Returns ``(step, state)`` or ``(None, None)``."""
        newest_first = [step] if step is not None else list(reversed(self.steps()))
        for s in newest_first:
            got, state = self.restore_state(abstract_state, s)
            if got is None:
                continue
            if data_iter is not None and not self.restore_data(got, data_iter):
                continue
            return got, state
        return None, None

    def unreadable_error(self) -> UnreadableCheckpointsError:
        steps = ", ".join(str(s) for s in sorted(self.unreadable))
        return UnreadableCheckpointsError(
            f"No checkpoint in {self.directory} could be restored (steps {steps}); they do not match this "
            "run or are damaged: use a new --workdir, or pass --restart_if_unreadable to set them aside "
            "and train from step 0.")

    def wait(self) -> None:
        try:
            with quiet_libraries():
                self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._write_failed(e, None)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            with quiet_libraries():
                try:
                    self.manager.close()
                except Exception:  # noqa: BLE001 - a failed async save was already reported by wait()
                    pass
            logging.getLogger("absl").removeFilter(self._filter)
            if sys.unraisablehook is self._hook:
                sys.unraisablehook = self._previous_hook


def _data_save_args(data_iter):
    """Virtual-shard iterators save one state per shard (resumable on another process count)."""
    if isinstance(data_iter, elastic.VirtualShardsIterator):
        return elastic.ShardStateSave(data_iter)
    return grain.checkpoint.CheckpointSave(data_iter)


def _data_restore_args(data_iter):
    if isinstance(data_iter, elastic.VirtualShardsIterator):
        return elastic.ShardStateRestore(data_iter)
    return grain.checkpoint.CheckpointRestore(data_iter)


class PreemptionGuard:
    """Turns SIGTERM and a first Ctrl-C (SIGINT) into flags; the training loop saves and stops at the next
    step boundary (then ``stop_reason`` says which). A second Ctrl-C raises KeyboardInterrupt at once.

    Ctrl-C saves like SIGTERM because stopping without a save throws away up to ``train.checkpoint_every``
    steps, while a save costs about one checkpoint's time; whoever cannot wait presses Ctrl-C again. A
    process that inherited SIGINT as ignored (a background job of a shell) keeps ignoring it.
    """

    def __init__(self):
        self.requested = False  # SIGTERM
        self.interrupted = False  # Ctrl-C
        self.stop_reason: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): no handler, no guard
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        if signum != signal.SIGINT:
            self.requested = True
            return
        if self.interrupted:
            interrupts.clear()
            raise KeyboardInterrupt
        interrupts.note()
        self.interrupted = True
        print("\nCtrl-C: saving at the next step, then stopping (Ctrl-C again stops at once without saving).",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False

    def should_stop(self) -> bool:
        """True on every host as soon as any host was signalled (a collective when there are several);
        ``stop_reason`` is then "Ctrl-C" or "SIGTERM". A Ctrl-C whose KeyboardInterrupt was swallowed before
        the loop began (``interrupts.received``) counts too."""
        self.interrupted = self.interrupted or interrupts.received()
        flags = [int(self.interrupted), int(self.requested)]
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flags = [int(v) for v in multihost_utils.process_allgather(jax.numpy.asarray(flags)).max(axis=0)]
        if flags[0]:
            self.stop_reason = "Ctrl-C"
        elif flags[1]:
            self.stop_reason = "SIGTERM"
        return self.stop_reason is not None
