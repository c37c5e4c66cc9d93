"""Command line: ``python -m proxy_jax.main --config=configs/proxy_tokens.py:tiny --workdir=DIR``.

Every config value can be overridden (``--config.data.seq_len=1024``); a misspelt key or an impossible
setting stops before anything is compiled. Re-running the same command resumes from the newest
checkpoint in DIR. At the end it prints raw-byte bits per byte on the held-out documents next to gzip's
and xz's, and a sample generated from a raw prompt.
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
    from proxy_jax import train

    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/proxy_tokens.py:tiny")
    workdir = _WORKDIR.value
    if not workdir:
        raise app.UsageError("--workdir is required: a directory for checkpoints and metrics.")
    try:
        summary = train.train(config, workdir)
    except (ValueError, train.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
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
    if sample is not None:
        print("\nsample from a raw prompt:\n" + sample)


def run() -> None:
    flags.mark_flag_as_required("workdir")
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
