"""Test-wide settings and shared fixtures.

* Devices: tests run on ONE CPU device, so single-device tests compile for one device instead of running
  8-way SPMD on two cores. The tests that need a mesh live in ``tests/multidevice/``; they are collected
  only in the subprocess that ``test_multidevice.py`` starts with ``PROXY_JAX_TEST_DEVICES=8`` (8 fake
  CPU devices must be set before JAX starts, so they cannot share a process with the others).
* absl flags are marked parsed (Grain's worker processes read them).
* Shared helpers (the standard-library documents, configs with dotted overrides, the one shrink of a preset
  to a tiny run, mixing schedules) live in ``helpers.py``; tests import them directly.
"""

import os

DEVICES = int(os.environ.get("PROXY_JAX_TEST_DEVICES", "1"))
if DEVICES > 1:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

collect_ignore = [] if DEVICES > 1 else ["multidevice"]
