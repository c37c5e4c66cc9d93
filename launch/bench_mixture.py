"""Input pipeline speed of a 2-component mixture (data.mixture) against each of its sources alone.

    python launch/bench_mixture.py [--workdir=/tmp/proxy_jax_bench_mixture] [--batches=200] [--repeats=3]
        [--proxy=bytes|gzip]

Writes (once, in --workdir) the standard library's .py files, each cut to its first 4 KiB, as a Parquet
folder (column ``content``, the files in even positions) and a JSONL file (field ``text``, odd positions),
then times ``make_pipeline`` over 200 batches (after 5 warm-up batches) of: the Parquet folder alone, the
JSONL file alone, and the mixture of both at weights 3:1. seq_len 4096, batch 8, one process, no worker
processes. ``--proxy=bytes`` (default) is the byte baseline, so the time is the loader's own (reading,
mixing, packing); ``--proxy=gzip`` compresses every document at r = 0.9 in sentinel mode. The runs
alternate, ``--repeats`` rounds, so a change in the machine's load reaches every run alike.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from absl import flags

from proxy_jax import config as config_lib
from proxy_jax.data import mixture_stream, pipeline, sources
from proxy_jax.proxies.simple import GzipProxy


def write_corpus(workdir: str) -> tuple[str, str]:
    folder, jsonl = os.path.join(workdir, "parquet"), os.path.join(workdir, "prose.jsonl")
    if not os.path.exists(jsonl):
        files, _ = sources.stdlib_files()
        texts = [open(p, "rb").read()[:4096].decode("utf-8", "replace") for p in files]
        os.makedirs(folder, exist_ok=True)
        even = texts[0::2]
        for k in range(4):
            pq.write_table(pa.table({"content": even[k::4]}), os.path.join(folder, f"part-{k}.parquet"))
        with open(jsonl + ".tmp", "w") as fh:
            for t in texts[1::2]:
                fh.write(json.dumps({"text": t}) + "\n")
        os.replace(jsonl + ".tmp", jsonl)
    return folder, jsonl


def base(proxy: str):
    c = config_lib.base_config()
    c.data.seq_len, c.data.batch_size = 4096, 8
    c.mix.warmup_steps = c.mix.steady_steps = c.mix.decay_steps = 0
    c.mix.mode_final = "sentinel" if proxy == "gzip" else "vanilla"
    c.mix.rate_init = c.mix.rate_peak = c.mix.rate_final = 0.9 if proxy == "gzip" else 0.0
    c.proxy.name = proxy
    return c


def _cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def time_run(c, batches: int, proxy, warmup: int = 5) -> tuple[float, float, float]:
    """(symbols per second, documents per second, CPU cores busy) of ``batches`` batches."""
    source = mixture_stream.load_split(c.data, "train")
    it = iter(pipeline.make_pipeline(c, "train", proxy=proxy, source=source, process_index=0, process_count=1))
    for _ in range(warmup):
        next(it)
    docs = 0
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        docs += int(next(it)["num_docs"].sum())
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    it.close()
    return batches * c.data.batch_size * c.data.seq_len / wall, docs / wall, cpu / wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/proxy_jax_bench_mixture")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--proxy", default="bytes", choices=("bytes", "gzip"))
    args = ap.parse_args()
    flags.FLAGS.mark_as_parsed()
    folder, jsonl = write_corpus(args.workdir)
    runs = []
    c = base(args.proxy)
    c.data.source, c.data.path, c.data.text_field = "parquet", folder, "content"
    runs.append(("parquet alone", c))
    c = base(args.proxy)
    c.data.source, c.data.path = "jsonl", jsonl
    runs.append(("jsonl alone", c))
    c = base(args.proxy)
    c.data.mixture = [{"name": "code", "source": "parquet", "path": folder, "text_field": "content", "weight": 3},
                      {"name": "prose", "source": "jsonl", "path": jsonl, "weight": 1}]
    runs.append(("mixture parquet:jsonl 3:1", c))
    proxy = GzipProxy() if args.proxy == "gzip" else None
    print(f"proxy {args.proxy}, seq_len 4096, batch 8, {args.batches} timed batches, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'run':28s} {'symbols/s':>12s} {'docs/s':>9s} {'cores busy':>10s} {'per core':>12s}")
    for _ in range(args.repeats):
        for name, c in runs:
            rate, docs, busy = time_run(c, args.batches, proxy)
            print(f"{name:28s} {rate:12,.0f} {docs:9,.0f} {busy:10.2f} {rate / max(busy, 1e-9):12,.0f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
