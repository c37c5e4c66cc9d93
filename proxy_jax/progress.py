"""Progress of a long loop: a tqdm bar where someone watches, plain lines where the output is a file.

In a terminal (stderr is a TTY) and in notebooks (Jupyter, Colab) the loop shows tqdm's bar. Elsewhere
(TPU pods, CI, ``> log 2>&1``) a bar would write one carriage-return update per step, so a long run's
log becomes one enormous line; there :class:`Lines` prints one plain line every ``every_s`` seconds
(``config.train.progress_every_s``, 30 s by default) and one at the end:

    train step 120/800 | loss 3.412 | 4.10 steps/s | elapsed 0:00:31 | ETA 0:02:46

The rate is measured over the last interval (so it follows the run's current speed); the ETA is the
remaining steps at that rate. Only process 0 should make one (the caller decides). Evaluation (batches),
code generation and preprocessing (documents) count their own unit through the same :func:`bar` and
:func:`iterate`, so no command writes carriage returns into a log file.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def in_notebook() -> bool:
    """True inside a Jupyter/Colab kernel (its stderr is not a TTY, but a bar renders there)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Lines:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as plain lines at a steady time interval."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train", unit: str = "step",
                 every_s: float = 30.0, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.n, self.desc, self.every_s = total, initial, desc, float(every_s)
        self.unit = unit
        self.units = unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = self.last_time = clock()
        self.last_n = initial
        self.postfix: dict[str, str] = {}
        self.closed = False

    def set_postfix(self, refresh: bool = True, **values) -> None:  # ``refresh``: tqdm's, nothing to redraw here
        self.postfix = {k: str(v) for k, v in values.items()}

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_time >= self.every_s:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        rate = (self.n - self.last_n) / max(now - self.last_time, 1e-9)
        parts = [f"{self.desc} {self.unit} {self.n}/{self.total}"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{rate:.2f} {self.units}/s")
        parts.append(f"elapsed {_clock(now - self.start)}")
        if self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate) if rate > 0 else '?'}")
        print(" | ".join(parts), file=self.stream, flush=True)
        self.last_time, self.last_n = now, self.n

    def close(self) -> None:
        """Prints the last line (unless one was just printed for this step)."""
        if not self.closed and self.n != self.last_n:
            self._line()
        self.closed = True


class Off:
    """A progress display that shows nothing (``bar(..., disable=True)``)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, refresh: bool = True, **values) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, *, initial: int = 0, desc: str = "train", unit: str = "step", every_s: float = 30.0,
        disable: bool = False, leave: bool = True):
    """A tqdm bar in a terminal or a notebook, else :class:`Lines` every ``every_s`` seconds (``leave``: the
    bar stays on screen when closed); :class:`Off` when ``disable``."""
    if disable:
        return Off()
    if sys.stderr.isatty() or in_notebook():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)
    return Lines(total, initial=initial, desc=desc, unit=unit, every_s=every_s)


def iterate(items: Iterable[T], total: int, *, desc: str, unit: str, every_s: float = 30.0,
            disable: bool = False, leave: bool = True) -> Iterator[T]:
    """Yields ``items``, advancing a :func:`bar` of ``total`` by one per item; closed when the loop ends."""
    shown = bar(total, desc=desc, unit=unit, every_s=every_s, disable=disable, leave=leave)
    try:
        for item in items:
            yield item
            shown.update(1)
    finally:
        shown.close()
