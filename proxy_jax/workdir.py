"""A run's workdir: its files, its lock, and what may change when a run resumes in it.

Layout of ``DIR`` (written by ``proxy_jax.train``):

| path              | what                                                                       |
|-------------------|----------------------------------------------------------------------------|
| ``config.json``   | the run's full config                                                      |
| ``run.json``      | what the run is: proxy manifest with its pinned artifact, text format, vocabulary, model (``run_record``) |
| ``corpus_keys.txt.gz`` | the training split's document keys when the run was built (to name what changed) |
| ``checkpoints/``  | Orbax steps: train state + each process's data-iterator state             |
| ``metrics.jsonl`` | one JSON object per logged step (plus TensorBoard events)                  |
| ``metrics.superseded.jsonl`` | rows of steps a resumed run trained again (``proxy_jax.metrics``) |
| ``proxy/``        | the run's tokenizer (trained for it, or a copy of the one it was given), pinned in run.json |
| ``lock``          | ``{"host", "pid"}`` of the process training in it (empty when none is)     |
| ``config_history.jsonl`` | one row per resume that changed a resumable key: ``{"time", "changed"}`` |
| ``checkpoints.unreadable/`` | checkpoint steps that failed to restore, set aside for inspection |
| ``checkpoints.health/`` | ``STEP.json``: the loss and gradient norm around each step, healthy or not (``proxy_jax.health``) |
| ``checkpoints.set_aside/`` | steps newer than a ``train.resume_step`` rollback, set aside |

``run.json`` makes a workdir self-describing: ``proxy_jax.restore`` reads its parameters and proxy back
without the training corpus. Workdirs written before it have ``model.json`` instead (read by
:func:`load_model`).

One owner: :func:`lock` lets one process train in a workdir at a time (a lock left by a dead process on
the same host is taken over). A resumed run must keep every key that shapes its state or its data
(:func:`check_resume`); the keys in ``RESUMABLE`` may change and each change is recorded.
"""

from __future__ import annotations

import contextlib
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
from proxy_jax import storage
from proxy_jax.data import mixture as mixture_lib
from proxy_jax.model import ModelArgs
from proxy_jax.model.args import dtype_name

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
    path = storage.join(workdir, name)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist: --workdir must be a directory written by proxy_jax.main.")
    return path


def save_config(config: ml_collections.ConfigDict, workdir: str,
                changed: dict[str, tuple[Any, Any]] | None = None) -> None:
    """Writes ``config.json`` and, for a resume that changed resumable keys (``check_resume``'s result), one
    row of ``config_history.jsonl``. The training loop calls it only once the run has restored, so a refused
    resume leaves the workdir as it was."""
    if jax.process_index() != 0:
        return
    storage.makedirs(workdir)
    if changed:
        row = {"time": time.time(), "changed": {k: list(v) for k, v in changed.items()}}
        storage.append_text(storage.join(workdir, CONFIG_HISTORY), json.dumps(row) + "\n")
    storage.write_text(storage.join(workdir, CONFIG), config.to_json_best_effort(indent=2, sort_keys=True))


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
    if storage.is_remote(workdir):
        with _object_lock(workdir):
            yield
        return
    created = not os.path.isdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK)
    fresh = not os.path.exists(path)
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
            if fresh:  # a start refused before it wrote anything leaves the workdir as it found it
                _remove_if_unwritten(workdir, path, created)
    finally:
        os.close(fd)  # also drops the flock


def _remove_if_unwritten(workdir: str, lock_path: str, created: bool) -> None:
    """Removes the lock file this process created (still holding its flock), the empty folders under
    ``workdir`` and, when this process ``created`` it, ``workdir`` itself, if no file besides the lock was
    written there (a start that was refused, or stopped, before it wrote anything)."""
    for root, _, files in os.walk(workdir):
        if any(os.path.join(root, name) != lock_path for name in files):
            return
    os.remove(lock_path)
    for root, _, _ in sorted(os.walk(workdir), key=lambda walked: -len(walked[0])):
        if root != workdir or created:
            with contextlib.suppress(OSError):
                os.rmdir(root)


@contextlib.contextmanager
def _object_lock(workdir: str):
    """The lock of a workdir on object storage: no ``flock`` there, so the ``lock`` object names its holder
    and a newcomer refuses a holder that is alive (same host) or on another host. Two processes starting
    within the time it takes to write one object can both pass: keep one writer per workdir."""
    path = storage.join(workdir, LOCK)
    host, pid = socket.gethostname(), os.getpid()
    try:
        holder = json.loads(storage.read_text(path) or "{}") if storage.exists(path) else {}
    except ValueError:
        holder = {}
    if holder and (holder.get("host") != host or _alive(holder.get("pid", 0))) and holder.get("pid") != pid:
        raise WorkdirLockedError(
            f"{workdir} is in use by process {holder.get('pid')} on host {holder.get('host')} (see {path}); wait "
            f"for it to finish, use another --workdir, or delete {path} if that run is gone.")
    fresh = not storage.exists(path)
    storage.write_text(path, json.dumps({"host": host, "pid": pid, "since": time.time()}))
    try:
        yield
    finally:
        if fresh and storage.listdir(workdir) == [LOCK]:  # nothing else was written: leave nothing
            storage.remove(path)
        else:
            storage.write_text(path, "")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _upgraded(saved: dict) -> dict:
    """A saved config in today's names: ``model.vocab_size`` (the embedding rows, before the key was renamed)
    is ``model.padded_vocab_size``, and a dtype alias (``fp16``) its canonical name (``float16``)."""
    model = dict(saved.get("model") or {})
    if "vocab_size" in model:
        model.setdefault("padded_vocab_size", model.pop("vocab_size"))
    for key in ("dtype", "param_dtype"):
        try:
            model[key] = dtype_name(model[key], f"model.{key}")
        except (KeyError, ValueError):
            pass  # absent, or refused where the config is validated
    return {**saved, "model": model} if "model" in saved else saved


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple[Any, Any]]:
    """Compares ``config`` with the run saved in ``workdir`` (if it has checkpoints); returns the changed
    resumable keys ``{key: (saved, now)}`` (``save_config`` records them once the resume succeeds); raises
    :class:`ConfigMismatchError` naming every other changed key. Writes nothing. Keys the saved config
    lacks (added to the library since) are not compared. A mixture (``data.mixture``) is compared whole: its
    weights and stages may change, its components may not (``data.mixture.resume_changes``)."""
    path = storage.join(workdir, CONFIG)
    ckpt_dir = storage.join(workdir, CHECKPOINTS)
    has_steps = storage.isdir(ckpt_dir) and any(n.isdigit() for n in storage.listdir(ckpt_dir))
    if not (storage.exists(path) and has_steps):
        return {}
    saved_tree = _upgraded(json.loads(storage.read_text(path)))
    saved = _flat(saved_tree)
    # A mixture is compared as a whole (proxy_jax.data.mixture.resume_changes): its weights may change.
    mix_changed, mix_frozen = mixture_lib.resume_changes(saved_tree.get("data", {}).get("mixture", ""), config)
    _match_virtual_shards(config, saved)
    _match_index(config, saved)
    _match_scan_layers(config, saved)
    _match_paths(config, saved)
    now = _flat(_upgraded(json.loads(config.to_json_best_effort())))
    changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k] and
               not k.startswith("data.mixture")}
    changed.update({**mix_changed, **mix_frozen})
    # A lazily indexed corpus meets malformed lines as it reads them: skipping them from here on moves no
    # other document, so a run stopped by one resumes with --config.data.skip_malformed=True.
    lazy = saved.get("data.index") == "lazy"
    frozen = sorted(k for k in changed if not _resumable(k) and not (lazy and k == "data.skip_malformed")
                    and k not in mix_changed)
    if frozen:
        shown = "; ".join(f"{k} (saved {changed[k][0]!r}, now {changed[k][1]!r})" for k in frozen)
        raise ConfigMismatchError(
            f"{workdir} holds a run made with other settings that cannot change on resume: {shown}; keep the "
            "saved values (see its config.json) or use a new --workdir.")
    return changed


def _match_virtual_shards(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
    """``data.virtual_shards`` = 0 means "one per process, fixed when the run starts" (``train`` writes the
    resolved count into config.json): resuming with 0 takes the saved count, so a run started on P processes
    resumes on any count dividing P with the default. A run saved with 0 (before the count was recorded)
    takes the count its checkpoint's data stream names; the data pipeline refuses one it cannot continue."""
    key = "data.virtual_shards"
    if int(config.data.virtual_shards) == 0 and int(saved.get(key, 0) or 0) > 0:
        config.data.virtual_shards = int(saved[key])
    elif int(saved.get(key, 0) or 0) == 0:
        saved[key] = int(config.data.virtual_shards)


def _match_paths(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
    """Paths are recorded absolute (``storage.resolve_config_paths``); a run saved with a relative one resumes
    when that path, taken from the current folder, is the one given now."""
    for section, key in storage.PATH_KEYS:
        dotted, was = f"{section}.{key}", saved.get(f"{section}.{key}")
        if isinstance(was, str) and was and section in config and key in config[section] and \
                storage.resolve(was) == config[section][key]:
            saved[dotted] = config[section][key]


def _match_index(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
    """``data.index`` = "auto" is fixed when a run starts (``train`` writes "full" or "lazy" into config.json):
    resuming with "auto" takes the saved choice, and a run saved before the switch existed read every
    document, so it resumes with "full" (the same documents in the same order)."""
    key = "data.index"
    saved.setdefault(key, "full")
    if config.data.index == "auto":
        config.data.index = saved[key]


def _match_scan_layers(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
    """``model.scan_layers = "auto"`` is resolved once, when a run is first built (``assemble.fix_scan_layers``),
    and config.json keeps the True/False: resuming with "auto" takes the saved value, on any platform."""
    key = "model.scan_layers"
    if str(config.model.scan_layers).lower() == "auto" and isinstance(saved.get(key), bool):
        config.model.scan_layers = saved[key]


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The saved config, on top of today's defaults (keys added since the run was made keep their defaults)."""
    saved = _upgraded(json.loads(storage.read_text(_require(workdir, CONFIG))))
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


def load_model(workdir: str) -> tuple[ModelArgs, int]:
    """``(ModelArgs, logical vocabulary size)`` of an older workdir's ``model.json`` (whose ``args`` kept the
    padded size as ``vocab_size``)."""
    saved = json.loads(storage.read_text(_require(workdir, MODEL)))
    return ModelArgs(**{**saved["args"], "vocab_size": int(saved["vocab_size"])}), int(saved["vocab_size"])


def checkpointer(workdir: str, config: ml_collections.ConfigDict) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(storage.join(workdir, CHECKPOINTS), keep=config.train.keep_checkpoints,
                                 keep_healthy=config.train.keep_healthy)


def checkpoint_health(workdir: str, step: int) -> dict | None:
    """The health record of checkpoint ``step`` of ``workdir`` (``proxy_jax.health``; ``["healthy"]`` is
    True, False, or None while pending), or None when it has none."""
    return ckpt_lib.read_health(storage.join(workdir, CHECKPOINTS), step)


def warn_if_unhealthy(workdir: str, step: int) -> bool:
    """Logs one warning line when checkpoint ``step`` is not marked healthy; returns whether it is."""
    from proxy_jax import health

    record = checkpoint_health(workdir, step)
    if record is not None and record.get("healthy") is True:
        return True
    logging.getLogger(__name__).warning(
        "Checkpoint step %d of %s is not marked healthy: %s.", step, workdir, health.describe(record))
    return False
