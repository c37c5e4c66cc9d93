"""lm-evaluation-harness tasks scored while training (``train.lm_eval_tasks``), in the training process.

The tasks are loaded once, before the run touches its workdir (a task that does not load stops it there,
in one sentence); the model is the native backend (``lm_eval_backend.ProxyJaxLM.from_run``) over the
training run's own model, mesh and proxy, built once at the first evaluation: each evaluation swaps in the
current parameters, and the scoring function, compiled once per row length, is reused. Nothing runs
between evaluations, so the training steps do not slow down. Settings are those of
``python -m proxy_jax.lm_eval`` with its defaults (the task's own few-shot count or 0, lm-eval's few-shot
seed, the run's ``train.eval_window``, ``data.seq_len`` and ``train.eval_batch_size``), so a score equals
that command's on the checkpoint of the same step. Logged: ``eval/lm_eval/<task>/<metric>`` for each
metric (``<metric>_<filter>`` for a filter other than ``none``); standard errors are not computed.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "eval/lm_eval"


class Tasks:
    """The tasks of ``config.train`` (none: :meth:`score` returns ``{}``)."""

    def __init__(self, train):
        self.names = [n.strip() for n in str(train.lm_eval_tasks).split(",") if n.strip()]
        self.limit = int(train.lm_eval_limit) or None
        self._loaded = None
        self._lm = None
        if not self.names:
            return
        if int(train.eval_every) <= 0:
            raise ValueError(f"--config.train.lm_eval_tasks={train.lm_eval_tasks!r} is scored at every eval_every "
                             "steps: set --config.train.eval_every > 0.")
        try:
            from lm_eval.defaults import DEFAULT_OTHER_SEED
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise ValueError(f"--config.train.lm_eval_tasks={train.lm_eval_tasks!r} needs lm-evaluation-harness; "
                             "run pip install 'proxy_jax[lmeval]' or set --config.train.lm_eval_tasks=''.") from None
        manager = TaskManager(include_path=str(train.lm_eval_include_path) or None)
        try:
            self._loaded = manager.load(self.names)
        except Exception as e:  # lm-eval raises what its loaders raise (KeyError, OSError, datasets' errors)
            reason = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            raise ValueError(f"--config.train.lm_eval_tasks={train.lm_eval_tasks!r} does not load ({reason}); fix "
                             "the task or its data, point --config.train.lm_eval_include_path at the folder of "
                             "its YAML file, or drop it.") from None
        for task in self._loaded["tasks"].values():  # python -m proxy_jax.lm_eval's defaults
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)

    def __bool__(self) -> bool:
        return bool(self.names)

    def score(self, run) -> dict[str, float]:
        """Every metric of every task under ``run``'s current parameters (``assemble.Run``); ``{}`` without tasks."""
        if not self.names:
            return {}
        from lm_eval.evaluator import evaluate

        lm = self._model(run)
        lm.run.params = run.state.params
        out = evaluate(lm, self._loaded, limit=self.limit, bootstrap_iters=0, log_samples=False,
                       verbosity="WARNING")
        scores = _metrics(out["results"]) if out else {}
        log.info("step %d: %s", int(run.state.step), ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return scores

    def _model(self, run):
        if self._lm is None:
            from proxy_jax import restore
            from proxy_jax.evaluation import lm_eval_backend

            live = restore.RestoredRun(run.workdir, run.config, run.record, run.model, run.mesh, run.state.params,
                                       run.state_shardings.params, int(run.state.step))
            live.__dict__["proxy"] = run.proxy  # the run's own proxy, not one rebuilt from its manifest
            self._lm = lm_eval_backend.ProxyJaxLM.from_run(live)
        return self._lm


def _metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # "alias", "samples", standard errors
            out[f"{PREFIX}/{task}/{metric if filt == 'none' else f'{metric}_{filt}'}"] = float(value)
    return out
