"""Profiles on demand: a ``jax.profiler`` trace of steps N..N+K-1 (``train.profile_start_step``,
``train.profile_num_steps``) under ``{workdir}/profile/``.

The trace starts at the top of step N, once the device has finished everything before it (so the first
traced step is not charged with earlier work), and stops at the top of step N+K, once step N+K-1 has
finished. Each traced step is one ``StepTraceAnnotation`` ("train", ``step_num``), which TensorBoard's
profile plugin uses for its step-time breakdown. ``jax.profiler`` writes ``plugins/profile/<time>/
<host>.xplane.pb`` (TensorBoard) and ``<host>.trace.json.gz``/``perfetto_trace.json.gz`` (Perfetto,
ui.perfetto.dev); on object storage the files are written locally and copied up when the trace stops.
Tracing observes the run: it changes no batch, loss or parameter. Only process ``train.profile_process``
traces (-1: every process, one file per host).
"""

from __future__ import annotations

import logging
import os
import tempfile

import jax

from proxy_jax import storage

log = logging.getLogger(__name__)
PROFILE = "profile"


class Profiler:
    """Call :meth:`step` at the top of every training step and :meth:`close` when the loop ends."""

    def __init__(self, train, workdir: str):
        start, count, process = int(train.profile_start_step), int(train.profile_num_steps), int(train.profile_process)
        self.active = start >= 0 and process in (-1, jax.process_index())
        self.first, self.last = start, start + count - 1
        self.directory = storage.join(workdir, PROFILE)
        self._local = None
        self._annotation = None
        self._done = False
        self._from = self._seen = start

    @property
    def tracing(self) -> bool:
        return self._local is not None

    def step(self, step: int, state) -> None:
        """Starts, annotates or stops the trace before ``step`` runs (``state``: what the device works on)."""
        if not self.active or self._done:
            return
        if self._annotation is not None:
            self._annotation.__exit__(None, None, None)
            self._annotation = None
        if self.tracing and step > self.last:
            jax.block_until_ready(state)  # step `last` is complete in the trace
            self._stop()
            return
        if not self.tracing and self.first <= step <= self.last:
            jax.block_until_ready(state)
            remote = storage.is_remote(self.directory)
            self._local = tempfile.mkdtemp(prefix="profile_") if remote else storage.local(self.directory)
            os.makedirs(self._local, exist_ok=True)
            self._from = step
            jax.profiler.start_trace(self._local, create_perfetto_trace=True)
        if self.tracing:
            self._annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)
            self._annotation.__enter__()
            self._seen = step

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        if storage.is_remote(self.directory):
            for root, _, files in os.walk(self._local):
                for name in files:
                    rel = os.path.relpath(os.path.join(root, name), self._local)
                    storage.copy(os.path.join(root, name), storage.join(self.directory, *rel.split(os.sep)))
        log.info("Wrote a profile of steps %d..%d to %s (TensorBoard: tensorboard --logdir %s, Profile tab; "
                 "Perfetto: open its perfetto_trace.json.gz at ui.perfetto.dev).", self._from, self._seen,
                 self.directory, self.directory)
        self._local = None
        self._done = True

    def close(self) -> None:
        """Stops a trace still running (the run ended or stopped inside the traced steps)."""
        if self._annotation is not None:
            self._annotation.__exit__(None, None, None)
            self._annotation = None
        if self.tracing:
            self._stop()
