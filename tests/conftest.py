"""Test-wide settings and shared fixtures.

* Devices: tests run on ONE CPU device, so single-device tests compile for one device instead of running
  8-way SPMD on two cores. The tests that need a mesh live in ``tests/multidevice/``; they are collected
  only in the subprocess that ``test_multidevice.py`` starts with ``PROXY_JAX_TEST_DEVICES=8`` (8 fake
  CPU devices must be set before JAX starts, so they cannot share a process with the others).
* absl flags are marked parsed (Grain's worker processes read them).
* Shared helpers (the standard-library documents, configs with dotted overrides, the one shrink of a preset
  to a tiny run, mixing schedules) live in ``helpers.py``; tests import them directly. The fixtures here are
  three runs trained for a few steps on a small folder of standard-library files (session-wide: evaluation,
  generation, export and lm-eval tests share them).
"""

import os

DEVICES = int(os.environ.get("PROXY_JAX_TEST_DEVICES", "1"))
if DEVICES > 1:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

import helpers  # noqa: E402

flags.FLAGS.mark_as_parsed()

collect_ignore = [] if DEVICES > 1 else ["multidevice"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A folder of the first 3000 bytes of 40 standard-library files."""
    root = tmp_path_factory.mktemp("corpus")
    for path in helpers.stdlib_paths(40):
        (root / path.name).write_bytes(path.read_bytes()[:3000])
    return str(root)


@pytest.fixture(scope="session")
def bytes_run(tmp_path_factory, corpus):
    """The byte baseline (no sentinels) with two main heads, so that --speculative has a draft head."""
    return helpers.train_tiny(str(tmp_path_factory.mktemp("bytes")), corpus, "configs/bytes.py:tiny",
                              **{"model.num_pred_heads": 2})


@pytest.fixture(scope="session")
def tokens_run(tmp_path_factory, corpus):
    """The tokenizer baseline (mix modes vanilla, rate 1) with a 512-piece tokenizer."""
    return helpers.train_tiny(str(tmp_path_factory.mktemp("tokens")), corpus, "configs/tokens.py:tiny",
                              **helpers.TINY_TOKENIZER)


@pytest.fixture(scope="session")
def proxy_tokens_run(tmp_path_factory, corpus):
    """The paper's recipe (tokenizer proxy, sentinels) with a 512-piece tokenizer."""
    return helpers.train_tiny(str(tmp_path_factory.mktemp("proxy_tokens")), corpus, "configs/proxy_tokens.py:tiny",
                              **helpers.TINY_TOKENIZER)
