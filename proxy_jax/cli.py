"""Command-line plumbing shared by ``proxy_jax.main`` and ``proxy_jax.preprocess``."""

from __future__ import annotations

import re
import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors for a bad flag or a misspelt ``--config.key``."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e} (see --helpshort)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = " ".join(re.sub(r"\\[n']", " ", str(e)).replace("\\", "").strip("'\" ").split())
        unknown = re.match(r"'?(\w+)'?\s+(Did you mean .*)", text)
        if unknown:
            text = f"--config has no key {unknown[1]!r}. {unknown[2]}"
        sys.exit(f"error: bad command line: {text}")
