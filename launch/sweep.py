"""Compute-matched scaling sweeps (the logic lives in proxy_jax/scaling/sweep.py).

    python launch/sweep.py run --sweep=configs/sweeps/cpu.py --root=DIR [--shard=i/n]
    python launch/sweep.py setup --sweep=configs/sweeps/cpu.py --root=DIR
    python launch/sweep.py status --root=DIR [--sweep=configs/sweeps/cpu.py]
    python launch/sweep.py report DIR [--out=DIR] [--title=TEXT]

``run`` trains the sweep's runs one after another on this host, skipping finished runs and resuming
interrupted ones; ``--shard=i/n`` runs every n-th run from i, so n hosts can share one sweep:

    # SLURM job array, one shard per task (same --root on a shared filesystem):
    sbatch --array=0-7 --wrap 'python launch/sweep.py run --sweep=configs/sweeps/gpu.py \
        --root=/shared/sweep_gpu --shard=$SLURM_ARRAY_TASK_ID/8'
    # TPU VMs (a queue of single-host slices): one shard per VM, the bucket mounted with gcsfuse
    python launch/sweep.py run --sweep=configs/sweeps/gpu.py --root=/mnt/gcs/sweep --shard=$I/$N

``setup`` makes only what the sweep makes once before its runs (its M1, its preprocessed corpora, its
tokenizer; ``proxy_jax.scaling.setup``); ``run`` does it first too, and shards started together wait for
the first one to finish it. ``status`` prints a table of the runs (done / started / pending, step, raw bpb, wall time); ``report``
writes DIR/report.md and its PNGs from the finished runs' results.

A mistake (a sweep file that does not load, a bad shard) ends with one ``error:`` sentence and exit
status 2. Ctrl-C stops ``run`` like the training command (the run in progress saves at its next step; a
second Ctrl-C stops at once) and exits 130; the same command then resumes the interrupted run.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from proxy_jax import cli  # noqa: E402


def main(argv=None) -> None:
    cli.run_command(lambda: _main(argv), user_errors=("proxy_jax.scaling.sweep.Preempted",), on_interrupt=lambda: (
        "finished runs keep their results and the interrupted run its newest checkpoint; the same command "
        "skips the first and resumes the second."))


def _main(argv=None) -> None:
    from proxy_jax.scaling import results as results_lib
    from proxy_jax.scaling import sweep as sweep_lib

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the sweep's runs on this host")
    run.add_argument("--sweep", required=True, help="sweep file, e.g. configs/sweeps/cpu.py[:quick]")
    run.add_argument("--root", required=True, help="folder holding one workdir per run")
    run.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i")
    su = sub.add_parser("setup", help="make the sweep's shared M1, preprocessed corpora and tokenizer only")
    su.add_argument("--sweep", required=True)
    su.add_argument("--root", required=True)
    st = sub.add_parser("status", help="print the status table")
    st.add_argument("--root", required=True)
    st.add_argument("--sweep", default="", help="list the sweep's pending runs too")
    rep = sub.add_parser("report", help="write ROOT/report.md and its plots")
    rep.add_argument("root")
    rep.add_argument("--out", default="", help="output folder (default: ROOT)")
    rep.add_argument("--title", default="")
    args = p.parse_args(argv)
    # Absolute from here on (every run's workdir lies under it); ``report`` takes the folder as its argument.
    args.root = sweep_lib.local_root(args.root, "--root" if args.command != "report" else "ROOT")
    if args.command == "run":
        sweep_lib.run_sweep(sweep_lib.load_sweep(args.sweep), args.root, shard_spec=args.shard)
    elif args.command == "setup":
        sweep_lib.setup(sweep_lib.load_sweep(args.sweep), args.root)
    elif args.command == "status":
        names = [s.name for s in sweep_lib.runs(sweep_lib.load_sweep(args.sweep))] if args.sweep else None
        print(results_lib.format_status(results_lib.status(names, args.root)))
    else:
        print(sweep_lib.report(args.root, args.out or None, args.title))


if __name__ == "__main__":
    main()
