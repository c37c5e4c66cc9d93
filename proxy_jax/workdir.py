"""A run's workdir, and restoring what it holds for any consumer (evaluation, generation, M1, export).

Layout of ``DIR`` (written by ``proxy_jax.train``):

| path              | what                                                                       |
|-------------------|----------------------------------------------------------------------------|
| ``config.json``   | the run's full config                                                      |
| ``model.json``    | the model's static hyper-parameters (``ModelArgs``) and logical vocabulary |
| ``checkpoints/``  | Orbax steps: train state + each process's data-iterator state             |
| ``metrics.jsonl`` | one JSON object per logged step (plus TensorBoard events)                  |
| ``proxy/``        | a tokenizer trained for this run (cached)                                  |

``model.json`` makes a workdir self-describing: its parameters can be restored without rebuilding the
proxy (which may need the training corpus or an M1) just to learn the vocabulary size.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
    return ckpt_lib.Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=config.train.keep_checkpoints)


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
        restored_step, state = ckpt.restore(abstract, None, step=step)
    finally:
        ckpt.close()
    if state is None:
        raise FileNotFoundError(f"No checkpoint could be restored from {os.path.join(workdir, CHECKPOINTS)}.")
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
