"""Input pipeline throughput: symbols per second (and per CPU core) for packed sentinel-mode batches.

    python launch/bench_pipeline.py [--workdir=/tmp/proxy_jax_bench] [--batches=300] [--workers=0,2]
        [--online] [--profile]

Builds (once, cached in --workdir) preprocessed tokenizer-proxy shards of the standard library's .py
files, then times ``make_pipeline`` on them: sentinel mode, r = 0.9, seq_len 4096, batch 8. A symbol
is one input token of a row (batch k advances the stream by batch * seq_len symbols). "per core" is
symbols per CPU-second: CPU time of this process (all its threads) and of its worker processes
(psutil), so it does not flatter runs that use several cores.
``--online`` also times the tokenizer computed inside the pipeline instead of read from shards;
``--profile`` prints where the time of the in-process run goes (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time

import psutil

from absl import flags

from proxy_jax import config as config_lib
from proxy_jax import assemble
from proxy_jax.data import pipeline


def base(workdir: str):
    c = config_lib.base_config()
    c.data.source = "stdlib"
    c.data.seq_len = 4096
    c.data.batch_size = 8
    c.proxy.name = "tokenizer"
    c.proxy.vocab_size = 4096
    c.proxy.train_max_bytes = 8_000_000
    c.mix.warmup_steps = c.mix.steady_steps = c.mix.decay_steps = 0
    c.mix.rate_final = 0.9
    c.mix.mode_final = "sentinel"
    return c


def shards(workdir: str) -> str:
    out = os.path.join(workdir, "stdlib-tok4k")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        t0 = time.perf_counter()
        assemble.preprocess(base(workdir), out, cache_dir=os.path.join(workdir, "work"), num_shards=4,
                                  splits=("train",), progress_bar=False)
        print(f"preprocessed {out} in {time.perf_counter() - t0:.1f} s")
    return out


def _cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of this process and each of its descendants, by pid."""
    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def time_pipeline(c, batches: int, warmup: int = 5) -> tuple[float, float, float]:
    """(symbols per second, CPU cores busy, compressed-stream share)."""
    proxy = assemble.make_proxy(c) if pipeline.needs_compression(c) and c.data.source != "preprocessed" else None
    it = iter(pipeline.make_pipeline(c, "train", proxy=proxy, process_index=0, process_count=1))
    for _ in range(warmup):
        next(it)
    comp = streams = 0
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        b = next(it)
        comp += int(b["num_comp_streams"].sum())
        streams += int(b["num_streams"].sum())
    wall, cpu1 = time.perf_counter() - t0, _cpu_seconds()
    cpu = sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items())
    it.close()
    return batches * c.data.batch_size * c.data.seq_len / wall, cpu / wall, comp / max(streams, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/proxy_jax_bench")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--online", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    flags.FLAGS.mark_as_parsed()
    cores = os.cpu_count() or 1
    path = shards(args.workdir)

    runs = []
    for workers in [int(w) for w in args.workers.split(",")]:
        c = base(args.workdir)
        c.data.source, c.data.path, c.data.num_workers = "preprocessed", path, workers
        runs.append((f"preprocessed shards, {workers} workers", c))
        if args.online:
            c = base(args.workdir)
            c.proxy.model_path = os.path.join(path, "tokenizer.model")
            c.data.num_workers = workers
            runs.append((f"tokenizer online, {workers} workers", c))

    print(f"seq_len 4096, batch 8, sentinel r=0.9, {cores} cores, {args.batches} timed batches")
    print(f"{'run':36s} {'symbols/s':>12s} {'cores busy':>10s} {'per core':>12s} {'comp share':>10s}")
    for name, c in runs:
        rate, busy, share = time_pipeline(c, args.batches)
        print(f"{name:36s} {rate:12,.0f} {busy:10.2f} {rate / max(busy, 1e-9):12,.0f} {share:10.3f}")

    if args.profile:
        c = base(args.workdir)
        c.data.source, c.data.path = "preprocessed", path
        prof = cProfile.Profile()
        prof.enable()
        time_pipeline(c, args.batches)
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
        print(s.getvalue())


if __name__ == "__main__":
    main()
