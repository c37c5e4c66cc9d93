"""Command-line plumbing shared by ``proxy_jax.main`` and ``proxy_jax.preprocess``."""

from __future__ import annotations

import re
import sys

from absl import flags


def last_error_line(text: str) -> str:
    """The message of the innermost ``SomeError: message`` line of a text that embeds a traceback
    (ml_collections wraps a config file's exception that way); the text itself when there is none."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for line in reversed(lines):
        m = re.match(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.*)$", line)
        if m:
            return m[2]
    if any("No such file or directory" in ln for ln in lines):
        return next(ln for ln in lines if "No such file or directory" in ln)
    return " ".join(lines[:1]) if lines else str(text)


def config_error(e: BaseException, spec: str) -> str:
    """One sentence for a ``--config=FILE[:PRESET]`` that cannot be loaded."""
    text = str(e)
    path = spec.partition(":")[0]
    if "No such file or directory" in text or isinstance(e, FileNotFoundError):
        return f"error: config file {path!r} does not exist; pass e.g. --config=configs/proxy_tokens.py:tiny."
    return f"error: --config={spec} could not be loaded: {last_error_line(text)}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors for a bad flag or a misspelt ``--config.key``."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if "Traceback" in text or "\n" in text:
            m = re.match(r"flag (--\w+)=(\S+):", text)
            if m and m[1] == "--config":
                sys.exit(config_error(e, m[2]))
            text = last_error_line(text)
        sys.exit(f"error: {text} (see --helpshort)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = " ".join(re.sub(r"\\[n']", " ", str(e)).replace("\\", "").strip("'\" ").split())
        unknown = re.match(r"'?(\w+)'?\s+(Did you mean .*)", text)
        if unknown:
            text = f"--config has no key {unknown[1]!r}. {unknown[2]}"
        sys.exit(f"error: bad command line: {text}")
    except (SyntaxError, ImportError, NameError, OSError) as e:  # a config file that does not even load
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        sys.exit(config_error(e, spec) if not isinstance(e, SyntaxError) else
                 f"error: --config={spec} could not be loaded: {e.msg} ({e.filename}, line {e.lineno}).")
