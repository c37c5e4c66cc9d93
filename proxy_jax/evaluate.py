"""Command line: ``python -m proxy_jax.evaluate --workdir=DIR [--data=PATH] [--max_docs=N]`` prints JSON.

Raw-byte bits per byte of a finished run (``proxy_jax.evaluation.score.evaluate_workdir``). A run with no
documents to score, a window too large for memory, a non-finite checkpoint or a workdir without a readable
checkpoint ends with one ``error:`` sentence and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> None:
    from proxy_jax.evaluation import score

    p = argparse.ArgumentParser(prog="python -m proxy_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a training workdir (config.json + checkpoints/)")
    p.add_argument("--data", default="", help="documents to score instead of the run's held-out split: "
                   "a .jsonl file, an .array_record file or a folder of text files")
    p.add_argument("--data_glob", default="**/*.py", help="with a folder --data: which files are documents")
    p.add_argument("--max_docs", type=int, default=0, help="score only the first N documents (0 = all)")
    p.add_argument("--window", type=int, default=0, help="window length (0 = the run's train.eval_window)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    args = p.parse_args(argv)
    from proxy_jax import checkpoint

    try:
        result = score.evaluate_workdir(args.workdir, data=args.data, data_glob=args.data_glob,
                                        max_docs=args.max_docs, window=args.window, step=args.step)
    except (ValueError, OSError, checkpoint.UnreadableCheckpointsError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted.")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
