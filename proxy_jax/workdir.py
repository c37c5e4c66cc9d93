"""A run's workdir, and restoring what it holds for any consumer (evaluation, generation, M1, export).

Layout of ``DIR`` (written by ``proxy_jax.train``):

| path              | what                                                                       |
|-------------------|----------------------------------------------------------------------------|
| ``config.json``   | the run's full config                                                      |
| ``model.json``    | the model's static hyper-parameters (``ModelArgs``) and logical vocabulary |
| ``checkpoints/``  | Orbax steps: train state + each process's data-iterator state             |
| ``metrics.jsonl`` | one JSON object per logged step (plus TensorBoard events)                  |
| ``metrics.superseded.jsonl`` | rows of steps a resumed run trained again (``proxy_jax.metrics``) |
| ``proxy/``        | a tokenizer trained for this run (cached)                                  |
| ``lock``          | ``{"host", "pid"}`` of the process training in it (empty when none is)     |
| ``config_history.jsonl`` | one row per resume that changed a resumable key: ``{"time", "changed"}`` |
| ``checkpoints.unreadable/`` | checkpoint steps that failed to restore, set aside for inspection |
| ``checkpoints.health/`` | ``STEP.json``: the loss and gradient norm around each step, healthy or not (``proxy_jax.health``) |
| ``checkpoints.set_aside/`` | steps newer than a ``train.resume_step`` rollback, set aside |

``model.json`` makes a workdir self-describing: its parameters can be restored without rebuilding the
proxy (which may need the training corpus or an M1) just to learn the vocabulary size.

One owner: :func:`lock` lets one process train in a workdir at a time (a lock left by a dead process on
the same host is taken over). A resumed run must keep every key that shapes its state or its data
(:func:`check_resume`); the keys in ``RESUMABLE`` may change and each change is recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from typing import Any

import jax
import ml_collections

from proxy_jax import checkpoint as ckpt_lib
from proxy_jax import config as config_lib
from proxy_jax import optimizer as optimizer_lib
from proxy_jax import sharding
from proxy_jax.model import ModelArgs, Transformer

CONFIG = "config.json"
MODEL = "model.json"
CHECKPOINTS = "checkpoints"
LOCK = "lock"
CONFIG_HISTORY = "config_history.jsonl"

# Keys a resumed run may change (prefixes end with "."): the loop's cadences and lengths, the mesh (a
# checkpoint restores onto any mesh), the optimiser's scalars, kernels and rematerialisation, input
# prefetching. Every other key shapes the parameters, the optimiser state or the data order.
RESUMABLE = ("train.", "mesh.", "opt.lr", "opt.warmup_steps", "opt.min_lr_ratio", "opt.b1", "opt.b2",
             "opt.eps", "opt.weight_decay", "opt.clip_norm", "opt.grad_accum_steps", "model.attention",
             "model.remat_policy", "data.prefetch", "data.host_prefetch")


class WorkdirLockedError(RuntimeError):
    """Another live process trains in this workdir."""


class ConfigMismatchError(ValueError):
    """A resumed run changed keys that cannot change on resume."""


def _require(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: --workdir must be a directory written by proxy_jax.main.")
    return path


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    try:
        holder = json.loads(text) if text else {}
    except ValueError:
        holder = {}
    return holder if isinstance(holder, dict) else {}


def _alive(pid) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return True  # unreadable: assume a live holder (the message tells how to clear it)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def lock(workdir: str):
    """Holds ``workdir/lock`` for the block: one training process per workdir.

    The lock is an ``flock`` on the file (released by the kernel even on kill -9) plus the holder's host
    and pid written in it (for file systems without working ``flock``, and for the message). A file
    naming a dead process of this host is taken over; one naming a live process, or another host, is
    refused. Only process 0 of a multi-host run takes it (the others share its run). Released on exit
    by emptying the file (never unlinked, so two newcomers cannot lock two different files).
    """
    if jax.process_index() != 0:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        host, pid = socket.gethostname(), os.getpid()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder = _holder(fd)
        except BlockingIOError:
            holder = _holder(fd) or {"host": "?", "pid": "?"}
            holder["live"] = True
        other = holder and (holder.get("host"), holder.get("pid")) != (host, pid)
        if other and (holder.get("live") or holder.get("host") != host or _alive(holder.get("pid", 0))):
            raise WorkdirLockedError(
                f"{workdir} is in use by process {holder.get('pid')} on host {holder.get('host')} (see "
                f"{path}); wait for it to finish, use another --workdir, or delete {path} if that run is gone.")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"host": host, "pid": pid, "since": time.time()}).encode())
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # also drops the flock


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple[Any, Any]]:
    """Compares ``config`` with the run saved in ``workdir`` (if it has checkpoints); returns the changed
    resumable keys ``{key: (saved, now)}`` and records them in ``config_history.jsonl``; raises
    :class:`ConfigMismatchError` naming every other changed key. Keys the saved config lacks (added to
    the library since) are not compared."""
    path = os.path.join(workdir, CONFIG)
    ckpt_dir = os.path.join(workdir, CHECKPOINTS)
    has_steps = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    if not (os.path.exists(path) and has_steps):
        return {}
    with open(path, encoding="utf-8") as f:
        saved = _flat(json.load(f))
    now = _flat(json.loads(config.to_json_best_effort()))
    changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
    frozen = sorted(k for k in changed if not _resumable(k))
    if frozen:
        shown = "; ".join(f"{k} (saved {changed[k][0]!r}, now {changed[k][1]!r})" for k in frozen)
        raise ConfigMismatchError(
            f"{workdir} holds a run made with other settings that cannot change on resume: {shown}; keep the "
            "saved values (see its config.json) or use a new --workdir.")
    if changed and jax.process_index() == 0:
        with open(os.path.join(workdir, CONFIG_HISTORY), "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), "changed": {k: list(v) for k, v in changed.items()}}) + "\n")
    return changed


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The saved config, on top of today's defaults (keys added since the run was made keep their defaults)."""
    with open(_require(workdir, CONFIG), encoding="utf-8") as f:
        saved = json.load(f)
    config = config_lib.base_config()
    _merge(config, saved)
    return config


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
    for key, value in saved.items():
        if isinstance(value, dict) and key in config and isinstance(config[key], ml_collections.ConfigDict):
            _merge(config[key], value)
        else:
            with config.unlocked():
                current = config.get(key)
                config[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value) if isinstance(
                    current, tuple) and isinstance(value, list) else value


def save_model(args: ModelArgs, vocab_size: int, workdir: str) -> None:
    """Records the model's hyper-parameters and the logical vocabulary (320 + the proxy's symbols)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, MODEL), "w", encoding="utf-8") as f:
        json.dump({"args": dataclasses.asdict(args), "vocab_size": int(vocab_size)}, f, indent=2, sort_keys=True)


def load_model(workdir: str) -> tuple[ModelArgs, int]:
    """``(ModelArgs, logical vocabulary size)`` of the run in ``workdir``."""
    with open(_require(workdir, MODEL), encoding="utf-8") as f:
        saved = json.load(f)
    return ModelArgs(**saved["args"]), int(saved["vocab_size"])


def checkpointer(workdir: str, config: ml_collections.ConfigDict) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=config.train.keep_checkpoints,
                                 keep_healthy=config.train.keep_healthy)


def checkpoint_health(workdir: str, step: int) -> dict | None:
    """The health record of checkpoint ``step`` of ``workdir`` (``proxy_jax.health``; ``["healthy"]`` is
    True, False, or None while pending), or None when it has none."""
    return ckpt_lib.read_health(os.path.join(workdir, CHECKPOINTS), step)


def warn_if_unhealthy(workdir: str, step: int) -> bool:
    """Logs one warning line when checkpoint ``step`` is not marked healthy; returns whether it is."""
    from proxy_jax import health

    record = checkpoint_health(workdir, step)
    if record is not None and record.get("healthy") is True:
        return True
    logging.getLogger(__name__).warning(
        "Checkpoint step %d of %s is not marked healthy: %s.", step, workdir, health.describe(record))
    return False


@dataclasses.dataclass
class Restored:
    """A run's state read back from its workdir, sharded on ``mesh``."""

    config: ml_collections.ConfigDict
    args: ModelArgs
    vocab_size: int  # logical: 320 + proxy symbols
    mesh: Any
    state: Any  # sharding.TrainState
    state_shardings: Any
    step: int

    @property
    def params(self):
        return self.state.params


def restore(workdir: str, step: int | None = None, *, mesh=None,
            config: ml_collections.ConfigDict | None = None) -> Restored:
    """Restores the newest checkpoint of ``workdir`` that loads (or ``step``), on ``mesh`` (default: the
    run's mesh over this host's devices); ``config`` is the workdir's own, if the caller has read it."""
    config = config if config is not None else load_config(workdir)
    args, vocab_size = load_model(workdir)
    model = Transformer(args)
    mesh = mesh if mesh is not None else sharding.make_mesh(config)
    tx, _ = optimizer_lib.make_optimizer(config.opt, config.train.steps)
    abstract, shardings = sharding.abstract_train_state(config, model, tx, mesh)
    ckpt = checkpointer(workdir, config)
    try:
        if step is not None and step not in ckpt.steps():
            raise FileNotFoundError(f"{os.path.join(workdir, CHECKPOINTS)} has no step {step}; it holds steps "
                                    f"{ckpt.steps() or 'none'}.")
        restored_step, state = ckpt.restore_state(abstract, step=step)
    finally:
        ckpt.close()
    if state is None:
        if ckpt.unreadable:
            raise ckpt.unreadable_error()
        raise FileNotFoundError(f"{os.path.join(workdir, CHECKPOINTS)} holds no checkpoint"
                                + (f" of step {step}" if step is not None else "") + "; train the run first.")
    warn_if_unhealthy(workdir, int(restored_step))
    return Restored(config, args, vocab_size, mesh, state, shardings, int(restored_step))


def load_m1(m1_workdir: str, step: int | None = None):
    """The neural proxy's M1 from a byte-only training run (``configs/m1.py``)."""
    from proxy_jax.proxies.neural import m1 as m1_lib

    if not m1_workdir or not os.path.isdir(m1_workdir):
        raise FileNotFoundError(
            f"proxy.m1_workdir={m1_workdir!r} is not a directory; train M1 first with "
            "`python -m proxy_jax.main --config=configs/m1.py:tiny --workdir=DIR` and pass that DIR."
        )
    config = load_config(m1_workdir)
    if config.proxy.name != "bytes":
        raise ValueError(f"{m1_workdir} holds a {config.proxy.name!r} run; M1 must be a byte-only run (configs/m1.py).")
    restored = restore(m1_workdir, step)
    return m1_lib.M1.from_params(restored.args, restored.params, context=int(config.data.seq_len))
