"""Virtual data shards: a global stream of batches that does not depend on the number of hosts.

The training documents are split into V virtual shards (``data.virtual_shards``; 0 = one per process of
the run): shard v packs ``documents[v::V]`` (shuffled per epoch) into its own ``batch_size // V`` rows
with its own :class:`~proxy_jax.data.packing.PackedBatchIterator`. Global batch k is the rows of batch k of
shards 0, 1, ..., V-1 in that order, whatever the number of processes P. Process p owns the contiguous
block of shards ``[p * V/P, (p+1) * V/P)``, so its rows are rows ``[p * B/P, (p+1) * B/P)`` of the global
batch: exactly where ``sharding.host_to_global`` places them.

Every draw is a pure function of (seed, document, epoch, step), and a shard's step is its own batch
count, so a shard's stream is the same whichever process packs it. A checkpoint stores one small state
per shard (:class:`ShardStateHandler`: one JSON file per shard, written by the process that owns it);
a process restoring with another P reads the files of the shards it owns now. Hence a run can resume
on any P' that divides V and continue the same global stream: no document skipped or repeated, the same
draws, identical batches. A resume that cannot be honoured (another V, or P' not dividing V) stops with
one sentence.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any

import grain
import numpy as np

_STATE_VERSION = 1
_SHARD_FILE = "shard-{:05d}-of-{:05d}.json"
_SHARD_FILE_RE = re.compile(r"shard-(\d+)-of-(\d+)\.json")
_OLD_PROCESS_FILE = "process_{}-of-{}.json"  # grain's own handler, before virtual shards existed


class DataLayoutError(ValueError):
    """A checkpoint's data stream cannot be continued with this run's shards or processes."""


def resolve_shards(virtual_shards: int, process_count: int) -> int:
    """V: ``data.virtual_shards``, or one shard per process when it is 0."""
    return int(virtual_shards) or int(process_count)


def owned_shards(num_shards: int, process_index: int, process_count: int) -> range:
    """The contiguous block of shards process ``process_index`` packs (P must divide V)."""
    if num_shards % process_count:
        raise DataLayoutError(
            f"data.virtual_shards={num_shards} is not divisible by the {process_count} processes; every "
            f"process packs an equal block of virtual shards, so run on a process count that divides {num_shards}.")
    per = num_shards // process_count
    return range(process_index * per, (process_index + 1) * per)


class VirtualShardsDataset(grain.IterDataset):
    """This process's shards: ``shards`` maps shard index -> its ``PackedBatchDataset`` (ascending).

    ``host_prefetch`` > 0 packs that many batches ahead in a background thread (see
    :class:`VirtualShardsIterator`); the batches and the saved states are the same for every depth.
    """

    def __init__(self, shards: dict[int, grain.IterDataset], num_shards: int, host_prefetch: int = 0):
        super().__init__(list(shards.values()))
        if host_prefetch < 0:
            raise ValueError(f"host_prefetch={host_prefetch} must be >= 0 (0 = pack in the calling thread).")
        self._shards = dict(sorted(shards.items()))
        self.num_shards = int(num_shards)
        self.host_prefetch = int(host_prefetch)

    def __iter__(self) -> "VirtualShardsIterator":
        return VirtualShardsIterator({v: iter(ds) for v, ds in self._shards.items()}, self.num_shards,
                                     self.host_prefetch)

    def __str__(self) -> str:
        return f"VirtualShardsDataset(shards={list(self._shards)} of {self.num_shards})"


class _JoinedShards(grain.DatasetIterator):
    """Batches of the owned shards, rows concatenated in shard order; state = {shard: its state}."""

    def __init__(self, iterators: dict[int, grain.DatasetIterator]):
        super().__init__(list(iterators.values()))
        self._iterators = iterators

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._iterators.values()]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict[str, Any]:
        return {str(v): it.get_state() for v, it in self._iterators.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        for v, it in self._iterators.items():
            it.set_state(state[str(v)])


class _PackAhead(grain.experimental.ThreadPrefetchDatasetIterator):
    """Grain's thread prefetch, closed once: its own ``close`` runs again from ``__del__`` and fails when
    that happens at interpreter exit."""

    def close(self) -> None:
        if not self._closed:
            super().close()


class VirtualShardsIterator(grain.DatasetIterator):
    """Batches of the owned shards, rows concatenated in shard order; state keyed by shard.

    With ``host_prefetch`` = n > 0, Grain's ``ThreadPrefetchDatasetIterator`` packs up to n batches ahead
    in one background thread (plus the one it is packing), so the caller's ``next`` finds them ready. That
    iterator records the state after each batch it packs and hands it out with that batch, so
    ``get_state`` is always the position after the last batch returned by ``next``, never the packer's:
    a checkpoint resumes at the first batch the caller has not taken, for any n. The thread stops on
    ``set_state`` and on ``close`` (call it; it is also a daemon thread, which cannot keep the process
    alive); an error in it is raised by the ``next`` that would have returned its batch.
    """

    def __init__(self, iterators: dict[int, grain.DatasetIterator], num_shards: int, host_prefetch: int = 0):
        joined = _JoinedShards(iterators)
        if host_prefetch > 0:
            joined = _PackAhead(joined, int(host_prefetch))
        super().__init__(joined)
        self._shards = list(iterators)
        self.num_shards = num_shards

    @property
    def shards(self) -> list[int]:
        return list(self._shards)

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "virtual_shards": self.num_shards,
                "shards": copy.deepcopy(self._parent.get_state())}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores the owned shards from ``state``, which may hold other shards too (other processes')."""
        if state.get("version") != _STATE_VERSION:
            raise DataLayoutError(f"Data state version {state.get('version')!r} is not {_STATE_VERSION}; "
                                  "restore with the code version that saved it.")
        saved = int(state["virtual_shards"])
        if saved != self.num_shards:
            raise DataLayoutError(
                f"The checkpoint's data stream has {saved} virtual shards but this run has {self.num_shards}; "
                f"set --config.data.virtual_shards={saved} (a multiple of the process count) to continue it.")
        missing = [v for v in self._shards if str(v) not in state["shards"]]
        if missing:
            raise DataLayoutError(f"The checkpoint holds no state for virtual data shards {missing}; it is incomplete.")
        self._parent.set_state({str(v): state["shards"][str(v)] for v in self._shards})

    def __str__(self) -> str:
        return f"VirtualShardsIterator(shards={self.shards} of {self.num_shards})"


# ---- the checkpoint item: one file per shard --------------------------------------------------------

def write_states(directory, iterator: VirtualShardsIterator) -> None:
    """Writes one JSON file per shard this process owns into ``directory`` (an ``epath.Path``)."""
    state = iterator.get_state()
    for v, shard_state in state["shards"].items():
        (directory / _SHARD_FILE.format(int(v), state["virtual_shards"])).write_text(json.dumps(shard_state))


def read_states(directory, iterator: VirtualShardsIterator, process_index: int, process_count: int) -> None:
    """Restores ``iterator`` from the shard files in ``directory`` (any number of processes wrote them)."""
    names = [p.name for p in directory.iterdir()]
    found = [tuple(map(int, m.groups())) for m in map(_SHARD_FILE_RE.fullmatch, names) if m]
    if not found:
        old = directory / _OLD_PROCESS_FILE.format(process_index, process_count)
        if old.exists() and iterator.num_shards == process_count:
            # A checkpoint from before virtual shards: one plain packing state per process = one shard.
            iterator.set_state({"version": _STATE_VERSION, "virtual_shards": process_count,
                                "shards": {str(process_index): json.loads(old.read_text())}})
            return
        raise DataLayoutError(f"{directory} holds no virtual-shard states for {process_count} processes; "
                              "resume with the process count and data.virtual_shards that wrote it.")
    saved = {v_count for _, v_count in found}
    state = {"version": _STATE_VERSION, "virtual_shards": max(saved), "shards": {}}
    if len(saved) == 1:
        for v in iterator.shards:
            path = directory / _SHARD_FILE.format(v, iterator.num_shards)
            if path.exists():
                state["shards"][str(v)] = json.loads(path.read_text())
    iterator.set_state(state)


class ShardStateHandler:
    """Orbax checkpoint handler of a :class:`VirtualShardsIterator` (mirrors grain's own handler)."""

    def save(self, directory, item=None, args=None):
        write_states(directory, item or args.item)

    def restore(self, directory, item=None, args=None):
        import jax

        iterator = item or args.item
        read_states(directory, iterator, jax.process_index(), jax.process_count())
        return iterator

    def structure(self, directory):
        del directory
        return None

    def metadata(self, directory):
        del directory
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass

    @classmethod
    def typestr(cls):
        return f"{cls.__module__}.{cls.__qualname__}"


def _register():
    import orbax.checkpoint as ocp

    @ocp.args.register_with_handler(ShardStateHandler, for_save=True)
    @dataclasses.dataclass
    class ShardStateSave(ocp.args.CheckpointArgs):
        item: Any

    @ocp.args.register_with_handler(ShardStateHandler, for_restore=True)
    @dataclasses.dataclass
    class ShardStateRestore(ocp.args.CheckpointArgs):
        item: Any

    return ShardStateSave, ShardStateRestore


ShardStateSave, ShardStateRestore = _register()
