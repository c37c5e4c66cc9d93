"""Checkpoints: train state and the Grain iterator state saved together, in one Orbax step.

* ``CheckpointManager`` with async saves and keep-N;
* resume from the newest step that restores; a checkpoint that fails to restore is reported and the one
  before it is tried (a half-written or corrupt step never stops a resumed run);
* a save on SIGTERM (preemption): :class:`PreemptionGuard` turns the signal into a flag the loop polls.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from proxy_jax.data import elastic

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores ``(train_state, data_iterator)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(directory, options=options)

    def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = _data_save_args(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: Any, data_iter: grain.DatasetIterator | None, step: int | None = None):
        """Restores the newest step (or ``step``) that loads; returns ``(step, state)`` or ``(None, None)``.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (from ``jax.eval_shape``):
        arrays come back sharded as the running mesh wants, whatever mesh wrote them.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for s in candidates:
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iter is not None:
                items["data"] = _data_restore_args(data_iter)
            try:
                restored = self.manager.restore(s, args=ocp.args.Composite(**items))
            except elastic.DataLayoutError:
                raise  # the run itself cannot continue this data stream: an older step would not either
            except Exception as e:  # noqa: BLE001 - any failure means "this step is unusable"
                log.warning("Checkpoint step %d in %s could not be restored (%s: %s); trying an older one.",
                            s, self.manager.directory, type(e).__name__, e)
                continue
            return s, restored["state"]
        return None, None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
    """Turns SIGTERM into a flag; the training loop saves and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some notebook runners): no handler, no guard
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def should_stop(self) -> bool:
        """True on every host as soon as any host was signalled (a collective when there are several)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(jax.numpy.asarray(int(self.requested)))
        return bool(flags.max())
