"""Command line: ``python -m proxy_jax.export --workdir=DIR --out=DIR [--step=N]`` writes a Hugging Face
Llama checkpoint of a trained run (``proxy_jax.huggingface.export_workdir``; newest checkpoint by default).

A missing workdir or step, an unreadable checkpoint, a model Llama cannot hold, a run whose tokenizer
cannot be converted or a missing ``[export]`` extra ends with one ``error:`` sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m proxy_jax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a training workdir (config.json + checkpoints/)")
    p.add_argument("--out", required=True, help="folder to write the Hugging Face checkpoint into")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    a = p.parse_args(argv)
    from proxy_jax import checkpoint, huggingface, storage

    a.workdir, a.out = storage.resolve(a.workdir), storage.resolve(a.out)  # absolute from here on

    try:
        step = huggingface.export_workdir(a.workdir, a.out, step=a.step)
    except (ValueError, OSError, checkpoint.UnreadableCheckpointsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit("interrupted.")
    print(f"exported step {step} of {a.workdir} to {a.out}")


if __name__ == "__main__":
    main()
