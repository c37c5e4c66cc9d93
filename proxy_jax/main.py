"""Command line: ``python -m proxy_jax.main --config=configs/proxy_tokens.py:tiny --workdir=DIR``.

Every config value can be overridden (``--config.data.seq_len=1024``); a misspelt key or an impossible
setting stops before anything is compiled. Re-running the same command resumes from the newest
checkpoint in DIR. At the end it prints raw-byte bits per byte on the held-out documents next to gzip's
and xz's, and a sample generated from a raw prompt.

Accidents a user can cause end with one ``error:`` sentence and exit status 2 (no traceback): a config
file that does not load, a workdir in use by another process or resumed with changed settings, a full
disk or an unwritable workdir, unreadable checkpoints (``--restart_if_unreadable`` sets them aside and
starts over), a non-finite loss. SIGTERM saves and exits 0; Ctrl-C exits 130 (the newest checkpoint is
kept; run the same command to resume).
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from proxy_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the tokenizer cache.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, "
                               "multi-node GPU): coordinator and process ids come from the environment "
                               "(TPU metadata, SLURM, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID).")
_RESTART = flags.DEFINE_bool("restart_if_unreadable", False, "When the workdir has checkpoints but none of them "
                             "restores, set them aside (under checkpoints.unreadable/) and train from step 0 "
                             "instead of stopping.")




def main(argv) -> None:
    del argv
    import jax

    if _MULTIHOST.value:
        import os

        if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # explicit cluster description
            jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                       int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
        else:  # TPU pods, SLURM, Open MPI: discovered from the environment
            jax.distributed.initialize()
    # Our own progress at INFO; the libraries' chatter (absl, orbax) only from WARNING up.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("proxy_jax").setLevel(logging.INFO)
    from proxy_jax import checkpoint, train, workdir as workdir_lib

    try:
        config = _CONFIG.value
        if config is not None:
            config.keys()  # a file that failed to load is a placeholder that raises its error on first use
    except Exception as e:  # noqa: BLE001 - the config file's own error, as one sentence
        sys.exit(cli.config_error(e, flags.FLAGS["config"].serialize().partition("=")[2]))
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/proxy_tokens.py:tiny")
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    if "train.steps" in overrides:  # the recipe's phases and cadences follow (recipes.with_steps)
        from proxy_jax import recipes

        config = recipes.load_config(flags.FLAGS["config"].serialize().partition("=")[2], **overrides)
    workdir = _WORKDIR.value
    if not workdir:
        raise app.UsageError("--workdir is required: a directory for checkpoints and metrics.")
    user_errors = (ValueError, train.NonFiniteLossError, checkpoint.CheckpointWriteError,
                   checkpoint.UnreadableCheckpointsError, workdir_lib.WorkdirLockedError)
    try:
        _train_and_report(config, workdir)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # unwritable workdir, full disk outside a checkpoint save, a missing input
        print(f"error: {_os_sentence(e, workdir)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {workdir} keeps its newest complete checkpoint: run the same command to resume.",
              file=sys.stderr)
        sys.exit(130)


def _os_sentence(e: OSError, workdir: str) -> str:
    import errno

    if e.errno is None:  # raised by this library with its own sentence
        return str(e)
    where = f"{e.filename}" if e.filename else workdir
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR):
        return (f"cannot write {where}: {e.strerror}; fix the permissions or free disk space (or pick another "
                "--workdir), then run the same command again.")
    return f"{where}: {e.strerror or e}."


def _train_and_report(config, workdir: str) -> None:
    import jax

    from proxy_jax import train

    summary = train.train(config, workdir, restart_if_unreadable=_RESTART.value)
    if "preempted_at" in summary:
        if jax.process_index() == 0:
            print(f"stopped by SIGTERM at step {summary['preempted_at']}; run the same command to resume.")
        return
    out = train.report(summary)  # every process: sampling runs on the whole mesh
    if jax.process_index() != 0:
        return
    sample = out.pop("sample", None)
    print(json.dumps(out, indent=2, default=str))
    if "eval/raw_bpb" in out:
        print(f"\nraw bits/byte on {int(out.get('eval/docs', 0))} held-out documents: "
              f"model {out['eval/raw_bpb']:.3f} | gzip -9 {out['eval/gzip_bpb']:.3f} | "
              f"xz -9e {out['eval/xz_bpb']:.3f}")
    elif "eval_skipped" in out:
        print(f"\nno bits per byte: {out['eval_skipped']}.")
    if sample is not None:
        print("\nsample from a raw prompt:\n" + sample)


def run() -> None:
    flags.mark_flag_as_required("workdir")
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
