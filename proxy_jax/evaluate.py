"""Command line: ``python -m proxy_jax.evaluate --workdir=DIR [--task=TASK] [flags]`` prints JSON.

Tasks (``proxy_jax.evaluation.codegen.evaluate_task``): ``bpb`` (default: raw-byte bits per byte of the
held-out split, ``proxy_jax.evaluation.score``), ``humaneval``, ``humaneval_plus``, ``mbpp``,
``mbpp_plus`` (pass@k of generated completions), ``oracle_translation`` and ``robustness`` (the probes).
``--solutions=canonical`` scores the datasets' reference solutions instead of a model (no --workdir).
A run with no documents to score, a window too large for memory, a non-finite checkpoint or a workdir
without a readable checkpoint ends with one ``error:`` sentence and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> None:
    from proxy_jax.evaluation import codegen

    p = argparse.ArgumentParser(prog="python -m proxy_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="", help="a training workdir (config.json + checkpoints/)")
    p.add_argument("--task", default="bpb", help=f"one of {', '.join(codegen.TASKS)}")
    p.add_argument("--solutions", default="model", help="'model' (generate) or 'canonical' (reference solutions)")
    p.add_argument("--data", default="", help="bpb and oracle_translation: documents instead of the held-out split "
                   "(.jsonl, .array_record or a folder); humaneval_plus/mbpp_plus/mbpp (and robustness on "
                   "HumanEval+): the dataset file")
    p.add_argument("--limit", type=int, default=0, help="only the first N problems / documents (0 = all; "
                   "oracle_translation: 64)")
    p.add_argument("--n", type=int, default=1, help="completions per problem (pass@k for k <= n)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=0.95, help="nucleus mass when sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling and perturbation seed")
    p.add_argument("--out", default="", help="JSONL of per-problem results (completions beside it); a rerun "
                   "with the same --out resumes")
    p.add_argument("--batch_size", type=int, default=8, help="rows generated together (left padded)")
    p.add_argument("--max_new_bytes", type=int, default=0, help="ids written per completion (bytes; tokens for "
                   "a token model); 0 = 512 (code), 320 (oracle_translation)")
    p.add_argument("--speculative", action="store_true", help="greedy multi-byte decoding with the extra heads")
    p.add_argument("--workers", type=int, default=None, help="sandbox processes (default: CPU count)")
    p.add_argument("--data_glob", default="**/*.py", help="with a folder --data: which files are documents")
    p.add_argument("--max_docs", type=int, default=0, help="bpb: score only the first N documents (as --limit)")
    p.add_argument("--window", type=int, default=0, help="bpb: window length (0 = the run's train.eval_window)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    args = p.parse_args(argv)
    from proxy_jax import checkpoint

    bpb_kwargs = {"data_glob": args.data_glob, "max_docs": args.max_docs, "window": args.window} \
        if args.task == "bpb" else {}
    try:
        result = codegen.evaluate_task(
            args.task, workdir=args.workdir, solutions=args.solutions, data=args.data, limit=args.limit, n=args.n,
            temperature=args.temperature, top_p=args.top_p, out=args.out, batch_size=args.batch_size,
            max_new_bytes=args.max_new_bytes, speculative=args.speculative, seed=args.seed, step=args.step,
            workers=args.workers, **bpb_kwargs)
    except (ValueError, OSError, ImportError, checkpoint.UnreadableCheckpointsError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted.")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
