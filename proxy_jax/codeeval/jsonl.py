"""Append-only JSONL logs that survive interruption: what a resumable evaluation reads back and appends to.

``read(path, key)`` returns the complete records keyed by ``record[key]`` (a later record of the same key
wins; a last line cut short by an interruption is ignored). ``appender(path)`` opens the log for appending
and first ends such a cut-short line, so it cannot swallow the next record.
"""

from __future__ import annotations

import json
import os
from typing import IO


def read(path: str | None, key: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interruption
                    continue
                found[record[key]] = record
    return found


def _ends_cleanly(path: str) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def appender(path: str | None) -> IO[str] | None:
    """The log opened for appending (``None`` for no path), a cut-short last line ended first."""
    if not path:
        return None
    cut_short = os.path.exists(path) and not _ends_cleanly(path)
    out = open(path, "a", encoding="utf-8")
    if cut_short:
        out.write("\n")
    return out
