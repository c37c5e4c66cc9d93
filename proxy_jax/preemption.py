"""The training loop's signal guard: SIGTERM (preemption) and a first Ctrl-C become flags the loop polls, so
it saves at the next step boundary and stops (``proxy_jax.train``)."""

from __future__ import annotations

import signal
import sys

import jax

from proxy_jax import interrupts


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
