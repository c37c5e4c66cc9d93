"""Checkpoints: train state and the Grain iterator state saved together, in one Orbax step.

* ``CheckpointManager`` with async saves and keep-N;
* saving is idempotent: a step already on disk is kept (a second save of it is a no-op), unless that
  step failed to restore, in which case it is set aside under ``<dir>.unreadable/`` and written anew;
* resume from the newest step that restores: the train state is restored first, newest step first, and
  only then the data iterator of the step that loaded (a failed attempt never moves the iterator); each
  skipped step is one warning line (the libraries' tracebacks are silenced);
* a failed write (full disk, permissions) removes Orbax's temporary directories and raises
  :class:`CheckpointWriteError`, one sentence;
* a save on SIGTERM (preemption) and on Ctrl-C: :class:`PreemptionGuard` turns the signal into a flag the
  loop polls;
* each step's health record (``proxy_jax.health``) in ``<dir>.health/STEP.json``; retention keeps the newest
  ``keep`` steps plus the newest ``keep_healthy`` steps marked healthy, so a rollback target survives a run
  that goes on saving diverged states;
* steps set aside (unreadable ones, or newer than a ``train.resume_step`` rollback) move to
  ``<dir>.unreadable/`` or ``<dir>.set_aside/`` with their health record, never deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from proxy_jax import storage
from proxy_jax.checkpoint_failures import (  # noqa: F401 - _io_reason is named here too
    _DropLibraryErrors, _access_reason, _drop_closed_loop_callbacks, _io_reason, _is_bug, _report_once,
    quiet_libraries)
from proxy_jax.preemption import PreemptionGuard  # noqa: F401 - the loop's signal guard, named here too
from proxy_jax.data import elastic

log = logging.getLogger(__name__)


TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step still being written
HEALTH_SUFFIX = ".health"  # <dir>.health/STEP.json: the step's health record
HEALTH_FILE = "health.json"  # a set-aside step keeps its record inside its own folder


def read_health(directory: str, step: int) -> dict | None:
    """The health record of checkpoint ``step`` under ``directory`` (``proxy_jax.health``), or None."""
    path = storage.join(str(directory).rstrip("/") + HEALTH_SUFFIX, f"{int(step)}.json")
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return None


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, permissions); the message says which and what to do."""


class UnreadableCheckpointsError(RuntimeError):
    """Every checkpoint of a directory is damaged (bad bytes, missing files)."""


class CheckpointAccessError(OSError):
    """A checkpoint could not be read for a reason other than damage (a permission, a path): nothing is set
    aside; the message says which and what to do."""


class Checkpointer:
    """Saves and restores ``(train_state, data_iterator)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, keep_healthy: int = 2, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # retention is ours (:meth:`prune`): it knows which steps are healthy
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.directory = str(directory)
        self.keep, self.keep_healthy = int(keep), int(keep_healthy)
        self.health_dir = self.directory.rstrip("/") + HEALTH_SUFFIX
        self.unreadable: list[int] = []  # steps that failed to restore in this process
        self._records: dict[int, dict] | None = None  # health records, see _health_cache
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
                saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
                self.prune()
                return saved
        except Exception as e:  # noqa: BLE001 - turned into one sentence when it is an I/O failure
            self._write_failed(e, step)

    # ---- health records and retention ------------------------------------------------------------------

    def health(self, step: int) -> dict | None:
        """The health record of ``step`` (``proxy_jax.health``), or None."""
        return read_health(self.directory, step)

    def write_health(self, step: int, record: dict) -> None:
        """Writes ``step``'s record (process 0; written whole, then renamed, so a reader never sees half)."""
        self._health_cache[int(step)] = record
        if jax.process_index() != 0:
            return
        storage.makedirs(self.health_dir)
        storage.write_text(storage.join(self.health_dir, f"{int(step)}.json"), json.dumps(record, sort_keys=True))

    @property
    def _health_cache(self) -> dict[int, dict]:
        """Records as every process knows them: read once from disk, then updated by this run's writes (all
        processes compute the same marks, so retention decides the same everywhere without reading files
        process 0 may still be writing)."""
        if self._records is None:
            self._records = {s: r for s in self.steps() if (r := self.health(s)) is not None}
        return self._records

    def healthy_steps(self) -> list[int]:
        """Steps on disk marked healthy, oldest first."""
        return [s for s in self.steps() if (self._health_cache.get(s) or {}).get("healthy") is True]

    def prune(self) -> list[int]:
        """Deletes every step but the newest ``keep`` and the newest ``keep_healthy`` healthy ones."""
        steps = self.steps()
        kept = set(steps[-self.keep:]) | set(self.healthy_steps()[-self.keep_healthy:] if self.keep_healthy else [])
        gone = [s for s in steps if s not in kept]
        for s in gone:
            self.manager.delete(s)
            self._health_cache.pop(s, None)
            if jax.process_index() == 0:
                with contextlib.suppress(OSError):
                    storage.remove(storage.join(self.health_dir, f"{s}.json"))
        return gone

    def _write_failed(self, e: BaseException, step: int | None):
        reason = _io_reason(e)
        if reason is None:
            raise e
        self.remove_temporary()
        _report_once(self.directory)
        when = f" (by step {step})" if step is not None else ""  # async: the failed save may be an earlier one
        raise CheckpointWriteError(
            f"Could not write a checkpoint under {self.directory}{when}: {reason}; free disk space or fix the "
            "permissions, then run the same command to resume from the newest complete checkpoint.") from None

    def remove_temporary(self) -> list[str]:
        """Deletes Orbax's half-written step directories (``*.orbax-checkpoint-tmp*``); only the run that
        owns the directory may call this (a reader could remove a save in progress)."""
        removed = []
        if jax.process_index() != 0 or not storage.isdir(self.directory):
            return removed
        for name in storage.listdir(self.directory):
            if TMP_SUFFIX in name:
                storage.rmtree(storage.join(self.directory, name))
                removed.append(name)
        return removed

    def set_aside(self, steps: list[int], folder: str = "unreadable") -> list[str]:
        """Moves ``steps`` to ``<directory>.<folder>/`` (kept for inspection, out of Orbax's sight), each with
        its health record inside it."""
        moved = []
        if jax.process_index() == 0:
            dest_root = self.directory.rstrip("/") + "." + folder
            storage.makedirs(dest_root)
            for step in steps:
                src = storage.join(self.directory, str(step))
                if not storage.exists(src):
                    continue
                dest, k = storage.join(dest_root, str(step)), 1
                while storage.exists(dest):
                    dest, k = storage.join(dest_root, f"{step}.{k}"), k + 1
                storage.move(src, dest)
                record = storage.join(self.health_dir, f"{step}.json")
                if storage.exists(record):
                    storage.move(record, storage.join(dest, HEALTH_FILE))
                moved.append(dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("proxy_jax.checkpoint.set_aside")
        self.unreadable = [s for s in self.unreadable if s not in steps]
        for step in steps:
            self._health_cache.pop(step, None)
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

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[int | None, Any]:
        """Only the parameters of the newest step (or ``step``) that restores: ``(step, params)`` or
        ``(None, None)``; the optimiser state is never read (evaluation, sampling, export)."""
        candidates = [step] if step is not None else list(reversed(self.steps()))
        item = {"params": abstract_params}
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype),
                                    item)
        for s in candidates:
            try:
                with quiet_libraries():
                    restored = self.manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                        item=item, restore_args=restore_args, partial_restore=True)))
            except Exception as e:  # noqa: BLE001 - any failure means "this step is unusable"
                self._skip(s, e)
                continue
            return s, restored["state"]["params"]
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
        """Notes ``step`` as damaged, or raises when the failure is of another kind: a permission or path error
        (:class:`CheckpointAccessError`), a bug (as it is). Only damage may lead to setting a step aside."""
        reason = _access_reason(e)
        if reason is not None:
            raise CheckpointAccessError(
                f"Could not read checkpoint step {step} in {self.directory}: {reason} ({type(e).__name__}); fix the "
                "folder's permissions or path and run the same command again (no checkpoint was moved).") from None
        if _is_bug(e):
            raise e
        _report_once(self.directory)
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

    def unreadable_error(self, advice: str = "") -> UnreadableCheckpointsError:
        """The error for a directory whose every step is damaged; ``advice`` (what the calling command offers)
        defaults to what every reader can do."""
        steps = ", ".join(str(s) for s in sorted(self.unreadable))
        advice = advice or "restore the folder from a copy, or train the run again"
        return UnreadableCheckpointsError(
            f"No checkpoint in {self.directory} could be restored (steps {steps}): their files are damaged or do "
            f"not match this run; {advice}.")

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
