"""Whether this process received Ctrl-C: one flag shared by the command wrapper (``proxy_jax.cli``), which
sets it, and the training loop's signal guard (``checkpoint.PreemptionGuard``), which reads it.

A KeyboardInterrupt can be swallowed on its way up (by a library's ``except BaseException``); the flag
outlives it, so the loop still saves and stops at its next step, and the command still exits 130. The
loop clears it when it raises the KeyboardInterrupt that answers it, so in a notebook the next run
starts afresh.
Standard library only: it is imported before anything heavy.
"""

from __future__ import annotations

import threading

_received = threading.Event()


def note() -> None:
    """Records that Ctrl-C was received."""
    _received.set()


def received() -> bool:
    """True once Ctrl-C was received (and recorded with :func:`note`)."""
    return _received.is_set()


def clear() -> None:
    """Forgets a Ctrl-C that was answered (a KeyboardInterrupt was raised for it)."""
    _received.clear()
