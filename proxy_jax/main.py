"""Command line: ``python -m proxy_jax.main --config=configs/proxy_tokens.py:tiny --workdir=DIR``.

Every config value can be overridden (``--config.data.seq_len=1024``); a misspelt key or an impossible
setting stops before anything is compiled. Re-running the same command resumes from the newest
checkpoint in DIR. At the end it prints raw-byte bits per byte on the held-out documents next to gzip's
and xz's, and a sample generated from a raw prompt.

Accidents a user can cause end with one ``error:`` sentence and exit status 2 (no traceback): a config
file that does not load, a workdir in use by another process or resumed with changed settings, a full
disk or an unwritable workdir, damaged checkpoints (``--restart_if_unreadable`` sets them aside and
starts over; a permission or path error is its own sentence and moves nothing), a non-finite loss; a
command line without --config or --workdir gets the one-line usage and the sentence. ``--print_config``
prints the resolved config (preset and overrides applied) and exits.
SIGTERM saves and exits 0; Ctrl-C saves at the next step (a second Ctrl-C stops at once) and exits 130
with a sentence naming the checkpoint the workdir really keeps; run the same command to resume.
"""

from __future__ import annotations

import json
import os

from proxy_jax import cli  # the standard library only: nothing heavy is imported before Ctrl-C is handled

if __name__ == "__main__":
    cli.install_interrupt_handling()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]); every key "
                                          "can be overridden (--config.KEY=VALUE; --print_config lists them).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the tokenizer cache.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, "
                               "multi-node GPU): coordinator and process ids come from the environment "
                               "(TPU metadata, SLURM, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID).")
_RESTART = flags.DEFINE_bool("restart_if_unreadable", False, "When the workdir has checkpoints but every one is "
                             "damaged (bad bytes, missing files), set them aside (under checkpoints.unreadable/) "
                             "and train from step 0 instead of stopping.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config (the preset with every "
                                  "--config.KEY override applied) as --config.KEY=VALUE lines and exit.")

USAGE = ("usage: python -m proxy_jax.main --config=configs/FILE.py[:PRESET] --workdir=DIR "
         "[--config.KEY=VALUE ...] [--print_config] [--helpfull]")
CHECKPOINTS = "checkpoints"  # workdir.CHECKPOINTS, read here without importing JAX (Ctrl-C may land in that import)
USER_ERRORS = ("proxy_jax.train.NonFiniteLossError", "proxy_jax.checkpoint.CheckpointWriteError",
               "proxy_jax.checkpoint.UnreadableCheckpointsError", "proxy_jax.workdir.WorkdirLockedError")


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r}; flags are written --name=value.")
    config = cli.loaded_config()
    if config is None:
        raise cli.UsageError("--config is required, e.g. --config=configs/proxy_tokens.py:tiny --workdir=/tmp/run.")
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    if "train.steps" in overrides:  # the recipe's phases and cadences follow (recipes.with_steps)
        from proxy_jax import recipes

        config = recipes.load_config(flags.FLAGS["config"].serialize().partition("=")[2], **overrides)
    if _PRINT_CONFIG.value:
        cli.print_config(config)
        return
    workdir = _WORKDIR.value
    if not workdir:
        raise cli.UsageError("--workdir is required: a directory for checkpoints and metrics, e.g. --workdir=/tmp/run.")
    from proxy_jax import storage

    workdir = storage.resolve(workdir)  # absolute (``~`` expanded, ``file://`` removed) from here on
    storage.resolve_config_paths(config)
    import jax

    if _MULTIHOST.value:
        import os

        if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # explicit cluster description
            jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                       int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
        else:  # TPU pods, SLURM, Open MPI: discovered from the environment
            jax.distributed.initialize()
    cli.quiet_libraries()
    _train_and_report(config, workdir)


def interrupted_sentence(workdir: str | None) -> str:
    """What Ctrl-C left in ``workdir``, read from the disk (so it is true wherever the interrupt landed)."""
    if not workdir:
        return "nothing was started."
    workdir = os.path.abspath(os.path.expanduser(workdir[7:] if workdir.startswith("file://") else workdir)) \
        if "://" not in workdir or workdir.startswith("file://") else workdir  # as storage.resolve (not imported here)
    if "://" in workdir:  # object storage: not listed here (that would need its client); say what is always true
        return (f"{workdir} keeps its newest complete checkpoint, if any; the same command resumes from it "
                "(or starts from step 0).")
    directory = os.path.join(workdir, CHECKPOINTS)
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
    if not steps:  # Orbax names a step's folder by its number only once the step is complete
        return f"no checkpoint was saved in {workdir} yet; the same command starts the run from step 0."
    return f"{workdir} keeps its newest checkpoint, step {steps[-1]}; run the same command to resume from it."


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
    cli.run_command(lambda: app.run(main, flags_parser=cli.parse_flags), user_errors=USER_ERRORS, usage=USAGE,
                    on_interrupt=lambda: interrupted_sentence(flags.FLAGS["workdir"].value),
                    where=lambda: flags.FLAGS["workdir"].value)


if __name__ == "__main__":
    run()
