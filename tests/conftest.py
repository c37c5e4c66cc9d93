"""Test-wide settings and shared fixtures.

* Devices: tests run on ONE CPU device, so single-device tests compile for one device instead of running
  8-way SPMD on two cores. The tests that need a mesh live in ``tests/multidevice/``; they are collected
  only in the subprocess that ``test_multidevice.py`` starts with ``PROXY_JAX_TEST_DEVICES=8`` (8 fake
  CPU devices must be set before JAX starts, so they cannot share a process with the others). That
  process compiles without LLVM's expensive optimisations: its tests compare a mesh with one device (or
  the lm-eval backend with the library) inside the process, on rows of a few dozen tokens, so compiling
  is most of their time and both sides of each comparison are compiled alike.
* One folder per test session (``PROXY_JAX_TEST_SHARED``, a temporary folder made by the first pytest
  process and removed when it ends): pytest-xdist's workers and every subprocess a test starts inherit
  the variable, so they all find the same folder. It holds
  - JAX's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``, every executable however quick to
    compile): a train step of a given shape compiles once per session, not once per training, worker or
    subprocess. Set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep a cache across sessions; CI does not,
    so its time includes every compilation once. The summary line counts the cache's hits and misses in
    the pytest processes.
  - runs and corpora built once per session (``helpers.shared_folder``): the first process that asks
    builds one while the others wait for it, then all read it. They are read-only to tests: a test that
    damages, resumes or trains on a run works on a copy (``helpers.copy_run``).
* absl flags are marked parsed (Grain's worker processes read them).
* Shared helpers (the standard-library documents, configs with dotted overrides, the one shrink of a preset
  to a tiny run, mixing schedules) live in ``helpers.py``; tests import them directly. The fixtures here are
  three runs trained for a few steps on a small folder of standard-library files (evaluation, generation,
  export and lm-eval tests share them).
"""

import json
import os
import shutil
import socket
import tempfile

DEVICES = int(os.environ.get("PROXY_JAX_TEST_DEVICES", "1"))
if DEVICES > 1:
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={DEVICES} "
                               "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_ENV = "PROXY_JAX_TEST_SHARED"
OWNS_SHARED = SHARED_ENV not in os.environ  # the first pytest process of the session: it removes the folder
if OWNS_SHARED:
    os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="proxy_jax_tests_")
SHARED = os.environ[SHARED_ENV]
# Before JAX is imported (it reads these once); subprocesses inherit them.
CACHE_SETTINGS = {"JAX_COMPILATION_CACHE_DIR": os.path.join(SHARED, "jax_cache"),
                  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
for _key, _value in CACHE_SETTINGS.items():
    os.environ.setdefault(_key, _value)

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

import helpers  # noqa: E402

# In case a plugin imported JAX before this file.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

flags.FLAGS.mark_as_parsed()

collect_ignore = [] if DEVICES > 1 else ["multidevice"]

_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_cache_counts = {"hits": 0, "misses": 0}


def _count_cache_event(event, **kwargs):
    if event in _CACHE_EVENTS:
        _cache_counts[_CACHE_EVENTS[event]] += 1


jax.monitoring.register_event_listener(_count_cache_event)


def pytest_sessionfinish(session):
    """Every pytest process of the session (xdist workers, the multi-device one) leaves its cache counts."""
    folder = os.path.join(SHARED, "cache_counts")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
        json.dump(_cache_counts, f)


def pytest_terminal_summary(terminalreporter):
    folder = os.path.join(SHARED, "cache_counts")
    if not OWNS_SHARED or not os.path.isdir(folder):
        return
    rows = [json.load(open(os.path.join(folder, name))) for name in os.listdir(folder)]
    rows = [r for r in rows if r["hits"] or r["misses"]]  # not xdist's controller, which runs no test
    if not rows:
        return
    hits, misses = (sum(r[k] for r in rows) for k in ("hits", "misses"))
    entries = len(os.listdir(os.environ["JAX_COMPILATION_CACHE_DIR"])) \
        if os.path.isdir(os.environ["JAX_COMPILATION_CACHE_DIR"]) else 0
    terminalreporter.write_line(f"JAX compilation cache: {hits} hits, {misses} misses in {len(rows)} pytest "
                                f"processes; {entries} executables cached by all processes")


def pytest_unconfigure(config):
    if OWNS_SHARED and not hasattr(config, "workerinput"):
        shutil.rmtree(SHARED, ignore_errors=True)


# Files holding a test of a minute or more (measured 2026-12-03): run first, so that under ``-n 2`` one of
# them does not start last while the other worker idles.
LONG_FIRST = ("test_multidevice.py", "test_sweep.py", "test_elastic.py", "test_notebook.py")


def pytest_collection_modifyitems(items):
    order = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: the rest keeps its order


@pytest.fixture(scope="session")
def corpus():
    """A folder of the first 3000 bytes of 40 standard-library files."""
    return helpers.shared_folder("corpus", helpers.write_corpus)


@pytest.fixture(scope="session")
def bytes_run(corpus):
    """The byte baseline (no sentinels) with two main heads, so that --speculative has a draft head."""
    return helpers.shared_folder("runs/bytes", lambda wd: helpers.train_tiny(
        wd, corpus, "configs/bytes.py:tiny", **{"model.num_pred_heads": 2}))


@pytest.fixture(scope="session")
def tokens_run(corpus):
    """The tokenizer baseline (mix modes vanilla, rate 1) with a 512-piece tokenizer."""
    return helpers.shared_folder("runs/tokens", lambda wd: helpers.train_tiny(
        wd, corpus, "configs/tokens.py:tiny", **helpers.TINY_TOKENIZER))


@pytest.fixture(scope="session")
def proxy_tokens_run(corpus):
    """The paper's recipe (tokenizer proxy, sentinels) with a 512-piece tokenizer."""
    return helpers.shared_folder("runs/proxy_tokens", lambda wd: helpers.train_tiny(
        wd, corpus, "configs/proxy_tokens.py:tiny", **helpers.TINY_TOKENIZER))


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails: lm-eval must not reach the network for a local task."""
    def refuse(*args, **kwargs):
        raise OSError("network access during an offline test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
