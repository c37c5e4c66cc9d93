"""The command convention every command follows (``main``, ``evaluate``, ``preprocess``, ``export``,
``launch/sweep.py``): :func:`run_command` runs a command's body and

* turns a user error into ONE line ``error: <sentence>`` on stderr and exit status 2, no traceback:
  :data:`USER_ERRORS` (a bad value, a missing or unreadable file) plus the command's own error types;
* turns Ctrl-C (SIGINT), wherever it lands, into one line ``interrupted: <sentence>`` and exit status 130.
  The sentence comes from the command (e.g. which checkpoint its workdir really keeps), so it is
  accurate whatever was running. The process then ends with ``os._exit``: the ``finally`` blocks on the
  way out have already closed what the run opened (data iterators, checkpointers, the workdir lock), and
  a normal interpreter shutdown while XLA's compiler threads or Orbax's and Grain's threads still run
  can crash (a segmentation fault after an interrupt during setup was seen that way).

Ctrl-C can land where Python drops exceptions (a garbage-collector callback of JAX, a ``__del__``) or
inside an import (where a C extension turns it into an ``ImportError`` or aborts the process): an
interrupt inside an import is held until the import is over, a dropped one is delivered again a moment
later, and any exception raised after an interrupt counts as the interrupt. Commands install this first
thing, before their heavy imports; this module imports only the standard library at the top.

Also here: flag parsing with one-line errors for the absl commands (:func:`parse_flags`).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from typing import Callable

from proxy_jax import interrupts

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C

# A bad value (ValueError: every check of the library raises one sentence), a missing key in a user's
# file (KeyError), a missing, unreadable or unwritable file or folder (OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)


class UsageError(ValueError):
    """A command line that cannot run (a missing flag); printed after the command's one-line usage."""


def _deliver_again() -> None:
    """Sends SIGINT to this process again shortly (from a timer thread; Python runs the handler in the
    main thread at its next bytecode)."""
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    del signum
    interrupts.note()
    if _importing(frame):  # an extension module cut off halfway through its initialisation can abort the
        _deliver_again()  # process: hold the interrupt until the import is over
        return
    raise KeyboardInterrupt


def _keep_dropped_interrupts(previous):
    """A ``sys.unraisablehook`` that re-delivers a KeyboardInterrupt Python had to drop (one raised in a
    garbage-collector callback or a finaliser), so Ctrl-C is never lost."""

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) or unraisable.exc_type is KeyboardInterrupt:
            _deliver_again()
            return
        previous(unraisable)

    return hook


def install_interrupt_handling() -> None:
    """Ctrl-C raises KeyboardInterrupt and is remembered (see the module docstring). A process that
    inherited SIGINT as ignored (a background job of a shell) keeps ignoring it."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, _on_sigint):
        return
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _keep_dropped_interrupts(sys.unraisablehook)


def interrupted() -> bool:
    """True once this process received Ctrl-C (under :func:`install_interrupt_handling`)."""
    return interrupts.received()


def os_sentence(e: OSError, where: str = "") -> str:
    """One sentence for an ``OSError``: the path and the reason, and what to do when it is about writing."""
    if e.errno is None:  # raised by this library with its own sentence
        return str(e)
    path = e.filename or where
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR):
        return (f"cannot write {path}: {e.strerror}; fix the permissions or free disk space (or pick another "
                "folder), then run the same command again.")
    if e.errno == errno.ENOENT:
        return f"{path}: no such file or directory; check the path."
    return f"{path}: {e.strerror or e}."


def sentence(e: BaseException, where: str = "") -> str:
    """The message of a user error as one line."""
    if isinstance(e, OSError):
        text = os_sentence(e, where)
    elif isinstance(e, KeyError) and e.args:  # str(KeyError) quotes its message
        text = str(e.args[0])
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__


def fail(message: str, usage: str = "") -> None:
    """Prints ``usage`` (if any) and ``error: message`` on stderr and exits with status 2."""
    if usage:
        print(usage, file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _exit_interrupted(message: str) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the last line short
    print(f"\ninterrupted: {message}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not turn the exit into a traceback
            pass
    os._exit(EXIT_INTERRUPTED)


def _loaded(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The exception classes named ``module.Class`` whose modules are already imported (an error of a
    module that was never imported cannot have been raised, and importing it now would load JAX)."""
    out = []
    for name in names:
        module, _, cls = name.rpartition(".")
        if module in sys.modules:
            out.append(getattr(sys.modules[module], cls))
    return tuple(out)


def quiet_libraries() -> None:
    """Our own progress at INFO; the libraries' chatter (absl, JAX probing for a TPU, Orbax) only from WARNING
    up. A command calls it once its flags are parsed, before JAX starts."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("proxy_jax").setLevel(logging.INFO)


def run_command(body: Callable[[], object], *, user_errors: tuple[str, ...] = (),
                on_interrupt: Callable[[], str] = lambda: "stopped.", usage: str = "",
                translate: Callable[[str], str] = lambda s: s, where: Callable[[], str] = lambda: "") -> None:
    """Runs a command's ``body`` under the convention of the module docstring.

    ``user_errors`` adds the command's own error types (``"proxy_jax.train.NonFiniteLossError"``) to
    :data:`USER_ERRORS`; ``on_interrupt`` returns
    the sentence printed after Ctrl-C (called then, so it can look at what is on disk); ``usage`` is
    printed before a :class:`UsageError`; ``translate`` rewrites an error sentence in the command's own
    terms (e.g. a config key into the flag that sets it); ``where()`` names the folder an ``OSError``
    without a file name is about.
    """
    install_interrupt_handling()
    try:
        body()
    except SystemExit:
        if interrupted():
            _exit_interrupted(on_interrupt())
        raise
    except KeyboardInterrupt:
        _exit_interrupted(on_interrupt())
    except USER_ERRORS + _loaded(user_errors) as e:
        if interrupted():  # e.g. an ImportError or OSError caused by the interrupt itself
            _exit_interrupted(on_interrupt())
        fail(translate(sentence(e, where() or "")), usage if isinstance(e, UsageError) else "")
    except BaseException:
        if interrupted():
            _exit_interrupted(on_interrupt())
        raise
    if interrupted():  # an interrupt that every layer dropped: the run did not do what was asked
        _exit_interrupted(on_interrupt())


# ---- absl flag parsing -------------------------------------------------------------------------------

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


def _exit(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _resolved_config(arg: str, config_path) -> str:
    """``--config=NAME[:PRESET]`` with NAME resolved to a file (``recipes.config_path``: shipped configs by name)."""
    if not arg.startswith("--config="):
        return arg
    path, sep, preset = arg[len("--config="):].partition(":")
    return f"--config={config_path(path)}{sep}{preset}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (exit status 2) for a bad flag or a misspelt ``--config.key``."""
    from absl import flags

    from proxy_jax import recipes

    argv = [_resolved_config(a, recipes.config_path) for a in argv]
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if "Traceback" in text or "\n" in text:
            m = re.match(r"flag (--\w+)=(\S+):", text)
            if m and m[1] == "--config":
                _exit(config_error(e, m[2]))
            text = last_error_line(text)
        _exit(f"error: {text} (see --helpshort)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = " ".join(re.sub(r"\\[n']", " ", str(e)).replace("\\", "").strip("'\" ").split())
        unknown = re.match(r"'?(\w+)'?\s+(Did you mean .*)", text)
        if unknown:
            text = f"--config has no key {unknown[1]!r}. {unknown[2]}"
        _exit(f"error: bad command line: {text}")
    except (SyntaxError, ImportError, NameError, OSError) as e:  # a config file that does not even load
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        _exit(config_error(e, spec) if not isinstance(e, SyntaxError) else
              f"error: --config={spec} could not be loaded: {e.msg} ({e.filename}, line {e.lineno}).")


def loaded_config(name: str = "config"):
    """The value of an ml_collections ``--config`` flag, or None; a config file that failed to load raises
    its error on first use, which becomes one sentence here."""
    from absl import flags

    value = flags.FLAGS[name].value
    if value is None:
        return None
    try:
        value.keys()
    except Exception as e:  # noqa: BLE001 - the config file's own error, as one sentence
        _exit(config_error(e, flags.FLAGS[name].serialize().partition("=")[2]))
    return value


def print_config(config) -> None:
    """Prints every key of ``config`` as ``--config.KEY=VALUE`` lines (the form that overrides it)."""
    def walk(node, prefix):
        for key in node.keys():
            value = node[key]
            if hasattr(value, "keys") and not isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"--config.{prefix}{key}={value!r}" if isinstance(value, str) else \
                    f"--config.{prefix}{key}={value}"

    for line in walk(config, ""):
        print(line)
