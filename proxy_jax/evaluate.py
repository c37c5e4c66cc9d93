"""Command line: ``python -m proxy_jax.evaluate --workdir=DIR [--task=TASK] [flags]`` prints JSON.

Tasks (``proxy_jax.evaluation.codegen.evaluate_task``): ``bpb`` (default: raw-byte bits per byte of the
held-out split, ``proxy_jax.evaluation.score``), ``humaneval``, ``humaneval_plus``, ``mbpp``,
``mbpp_plus`` (pass@k of generated completions), ``oracle_translation`` and ``robustness`` (the probes).
``--solutions=canonical`` scores the datasets' reference solutions instead of a model (no --workdir).
A run with no documents to score, a window too large for memory, a non-finite checkpoint, a malformed
``--data`` file or a workdir without a readable checkpoint ends with one ``error:`` sentence and exit
status 2; a sentence names only this command's flags (a library sentence about ``config.data.path`` says
``--data``: :data:`FLAG_FOR_KEY`). Ctrl-C exits 130 (``proxy_jax.cli``).
"""

from __future__ import annotations

import argparse
import json
import re

from proxy_jax import cli

# The config keys this command sets from its own flags: an error sentence naming the key names the flag.
FLAG_FOR_KEY = {"data.path": "--data", "data.glob": "--data_glob", "data.text_field": "--text_field",
                "data.skip_malformed": "--skip_malformed", "train.eval_window": "--window",
                "train.eval_batch_size": "--batch_size"}


def in_flags(text: str) -> str:
    """``text`` with every ``--config.KEY[=VALUE]`` this command sets by a flag written as that flag; any other
    ``--config.KEY`` (not a flag of this command) loses its ``--``: it names a setting of the trained run."""
    def flag(m):
        name = FLAG_FOR_KEY[m[1]]
        value = m[2] or ""
        return name if name == "--skip_malformed" and value in ("=True", "=true") else name + value

    keys = "|".join(re.escape(k) for k in FLAG_FOR_KEY)
    text = re.sub(rf"(?:--)?config\.({keys})\b(=\S+?(?=[;,.)]?(?:\s|$)))?", flag, text)
    text = re.sub(rf"(?<![\w.-])({keys})\b(=\S+?(?=[;,.)]?(?:\s|$)))?", flag, text)
    return text.replace("--config.", "the run's config.")


def main(argv=None) -> None:
    cli.run_command(lambda: _main(argv), translate=in_flags, on_interrupt=lambda: (
        "results already written to --out are kept; the same command with the same --out resumes."))


def _main(argv=None) -> None:
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
    p.add_argument("--batch_size", type=int, default=0, help="rows generated together (left padded; 0 = 8); bpb: "
                   "windows scored together (0 = the run's train.eval_batch_size)")
    p.add_argument("--max_new_bytes", type=int, default=0, help="ids written per completion (bytes; tokens for "
                   "a token model); 0 = 512 (code), 320 (oracle_translation)")
    p.add_argument("--speculative", action="store_true", help="greedy multi-byte decoding with the extra heads")
    p.add_argument("--workers", type=int, default=None, help="sandbox processes (default: CPU count)")
    p.add_argument("--data_glob", default="**/*.py", help="with a folder --data: which files are documents")
    p.add_argument("--text_field", default="", help="with a .jsonl --data: the field holding each document "
                   "(default: the run's data.text_field; for 'text', 'content' is tried next; a named field must exist)")
    p.add_argument("--skip_malformed", action="store_true", help="with a .jsonl --data: skip (and count) malformed "
                   "lines instead of stopping at the first")
    p.add_argument("--max_docs", type=int, default=0, help="bpb: score only the first N documents (as --limit)")
    p.add_argument("--window", type=int, default=0, help="bpb: window length (0 = the run's train.eval_window)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    args = p.parse_args(argv)
    bpb_kwargs = {"data_glob": args.data_glob, "max_docs": args.max_docs, "window": args.window,
                  "eval_batch_size": args.batch_size, "text_field": args.text_field,
                  "skip_malformed": args.skip_malformed} if args.task == "bpb" else {}
    try:
        result = codegen.evaluate_task(
            args.task, workdir=args.workdir, solutions=args.solutions, data=args.data, limit=args.limit, n=args.n,
            temperature=args.temperature, top_p=args.top_p, out=args.out, batch_size=args.batch_size or 8,
            max_new_bytes=args.max_new_bytes, speculative=args.speculative, seed=args.seed, step=args.step,
            workers=args.workers, **bpb_kwargs)
    except ImportError as e:  # an optional package a task needs
        raise ValueError(str(e)) from None
    except Exception as e:
        from proxy_jax import checkpoint

        if isinstance(e, checkpoint.UnreadableCheckpointsError):
            raise ValueError(str(e)) from None
        raise
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
