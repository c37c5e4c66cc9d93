"""Experiment trackers: where a run's metric rows go besides ``metrics.jsonl`` (``train.trackers``).

``tensorboard`` writes event files under ``{workdir}/tensorboard`` (tensorboardX, no TensorFlow);
``wandb`` logs to Weights & Biases (``pip install 'proxy_jax[wandb]'``). ``metrics.MetricsWriter`` hands
every row it writes to ``metrics.jsonl`` to each tracker at the same step, on process 0 only.

W&B: the run's config and its run record (``run.json``) are the W&B run's config; project, entity, tags,
group and job type come from ``train.wandb_*``, and where those are empty from W&B's own ``WANDB_*``
environment variables (``WANDB_MODE=offline`` and ``WANDB_DIR`` as W&B reads them; without ``WANDB_DIR`` a
local workdir keeps the W&B files in ``{workdir}/wandb``). The W&B run id is kept in ``{workdir}/wandb_run_id``,
so a resumed run continues the same W&B run. A run resumed from checkpoint s re-trains steps s.. that W&B
already holds; W&B refuses a step below its newest, so the tracker sends only the steps after the last one
``metrics.jsonl`` held when the run started: W&B keeps the first values of re-trained steps (the same numbers
for the deterministic ``train/`` keys; the old rows of every key stay in ``metrics.superseded.jsonl``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

from proxy_jax import storage

TRACKERS = ("tensorboard", "wandb")
WANDB_RUN_ID = "wandb_run_id"
DEFAULT_PROJECT = "proxy_jax"
_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX"), "wandb": ("wandb", "proxy_jax[wandb]")}


def names(train) -> tuple[str, ...]:
    """The trackers of ``config.train`` (``trackers``, less ``tensorboard`` when ``train.tensorboard`` is False);
    an unknown or uninstalled one is a ``ValueError`` in one sentence."""
    chosen = [n.strip() for n in str(train.trackers).split(",") if n.strip()]
    for name in chosen:
        if name not in TRACKERS:
            raise ValueError(f"--config.train.trackers names {name!r}, which is not a tracker; pick from "
                             f"{', '.join(TRACKERS)} (comma-separated), or '' for metrics.jsonl only.")
        module, package = _PACKAGES[name]
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f"--config.train.trackers names {name!r}, but {module} is not installed; run pip "
                             f"install '{package}' or drop {name!r} from --config.train.trackers.") from None
    if not train.tensorboard:  # the older switch still turns TensorBoard off
        chosen = [n for n in chosen if n != "tensorboard"]
    return tuple(dict.fromkeys(chosen))


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the trackers of one run need: their names, and what W&B records about the run."""

    trackers: tuple[str, ...]
    run_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # W&B's config: the config + run.json
    project: str = ""
    entity: str = ""
    tags: tuple[str, ...] = ()
    group: str = ""
    job_type: str = ""


def setup(config, record=None) -> Setup:
    """The trackers of a run ``config`` with its run record ``record`` (``run_record.RunRecord``)."""
    t = config.train
    run_config = json.loads(config.to_json_best_effort())
    if record is not None:
        run_config["run"] = record.to_json()
    tags = tuple(s.strip() for s in str(t.wandb_tags).split(",") if s.strip())
    return Setup(names(t), run_config, str(t.wandb_project), str(t.wandb_entity), tags, str(t.wandb_group),
                 str(t.wandb_job_type))


class TensorBoard:
    """Scalars to ``{workdir}/tensorboard``; a resumed run purges the events from its start step on (the rows
    ``kept`` at that step are written back)."""

    def __init__(self, workdir: str, start_step: int | None, kept: list[dict]):
        from tensorboardX import SummaryWriter

        # The suffix keeps two runs started in the same second from writing one file name (the second
        # would truncate the first); TensorBoard reads the files in name order, i.e. in time order.
        self._tb = SummaryWriter(storage.join(workdir, "tensorboard"), purge_step=start_step,
                                 filename_suffix=f".{time.time_ns()}")
        for row in kept:
            self.write(int(row["step"]), {k: v for k, v in row.items() if k not in ("step", "time")})

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        self._tb.close()


class WandB:
    """One W&B run per workdir (module docstring); rows of steps up to ``last_step`` are not sent again."""

    def __init__(self, workdir: str, s: Setup, last_step: int):
        import wandb
        from wandb.sdk.lib import runid

        id_path = storage.join(workdir, WANDB_RUN_ID)
        resumed = storage.exists(id_path)
        run_id = storage.read_text(id_path).strip() if resumed else (
            os.environ.get("WANDB_RUN_ID") or runid.generate_id())
        if not resumed:
            storage.write_text(id_path, run_id + "\n")
        self._last = last_step if resumed else -1
        directory = None
        if not os.environ.get("WANDB_DIR") and not storage.is_remote(workdir):
            directory = storage.local(workdir)
        try:
            self._run = wandb.init(
                id=run_id, resume="allow", dir=directory, config=s.run_config, reinit="finish_previous",
                project=s.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, entity=s.entity or None,
                tags=list(s.tags) or None, group=s.group or None, job_type=s.job_type or None,
                name=os.path.basename(storage.local(workdir).rstrip("/")) or None)
        except Exception as e:  # wandb's own errors: no login, no network, a refused project or entity
            raise ValueError(f"W&B could not start run {run_id} ({type(e).__name__}: {e}); run `wandb login` or set "
                             "WANDB_API_KEY, WANDB_MODE=offline to log without a network, or drop 'wandb' from "
                             "--config.train.trackers.") from None

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if int(step) <= self._last:  # W&B holds this step from before the resume
            return
        self._run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

    def close(self) -> None:
        self._run.finish()


def open_trackers(workdir: str, s: Setup, *, start_step: int | None, kept: list[dict], last_step: int) -> list:
    """The trackers of ``s`` for a run starting at ``start_step``; ``kept``: the rows of ``start_step`` kept in
    ``metrics.jsonl``; ``last_step``: the newest step it held before the run started (-1: none)."""
    out = []
    for name in s.trackers:
        out.append(TensorBoard(workdir, start_step, kept) if name == "tensorboard" else WandB(workdir, s, last_step))
    return out
