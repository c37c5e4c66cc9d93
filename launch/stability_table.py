"""Stability of each proxy: how much f(x) changes when 10% of x's characters are deleted.

    python launch/stability_table.py --m1_workdir=/tmp/m1_tiny [--docs 40] [--max_bytes 1000]

For held-out stdlib files (the validation split of the ``stdlib`` corpus, each cut to its first
``--max_bytes`` bytes for speed), x' deletes a seeded random 10% of x's characters; the score is the
Levenshtein distance between the id sequences f(x) and f(x') divided by the longer length, averaged over
files. Lower is more stable; the paper's finding is tokenizer < neural < gzip, and only stable proxies
transfer. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def edit_distance(a, b) -> int:
    """Levenshtein distance of two int sequences (row-by-row DP, vectorised over columns)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if len(a) == 0 or len(b) == 0:
        return int(max(len(a), len(b)))
    cols = np.arange(len(b) + 1)
    prev = cols.copy()
    for i in range(1, len(a) + 1):
        sub = prev[:-1] + (b != a[i - 1])
        tmp = np.concatenate([[i], np.minimum(prev[1:] + 1, sub)])
        prev = np.minimum.accumulate(tmp - cols) + cols  # insertions along the row
    return int(prev[-1])


def delete_chars(doc: bytes, fraction: float, rng: np.random.Generator) -> bytes:
    text = doc.decode("utf-8", errors="surrogateescape")
    keep = rng.random(len(text)) >= fraction
    return "".join(c for c, k in zip(text, keep) if k).encode("utf-8", errors="surrogateescape")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m1_workdir", required=True, help="a trained M1 (configs/m1.py)")
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--max_bytes", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk_bytes", type=int, default=256)
    ap.add_argument("--min_segment_bytes", type=int, default=1)
    ap.add_argument("--tokenizer_vocab", type=int, default=4096)
    ap.add_argument("--workdir", default="", help="tokenizer cache (default: a temporary folder)")
    args = ap.parse_args()

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from proxy_jax import config as config_lib
    from proxy_jax import assemble
    from proxy_jax.data import corpus

    base = config_lib.base_config()
    val = corpus.load_split(base.data, "validation")
    docs = [bytes(val[i])[: args.max_bytes] for i in range(min(args.docs, len(val)))]
    docs = [d for d in docs if d]
    rng = np.random.default_rng(args.seed)
    edited = [delete_chars(d, args.fraction, rng) for d in docs]
    workdir = args.workdir or tempfile.mkdtemp(prefix="stability_")

    rows = []
    for name in ("tokenizer", "neural", "gzip"):
        c = config_lib.base_config()
        c.proxy.name = name
        c.proxy.vocab_size = args.tokenizer_vocab
        c.proxy.train_max_bytes = 5_000_000
        c.proxy.m1_workdir = args.m1_workdir
        c.proxy.chunk_bytes = args.chunk_bytes
        c.proxy.min_segment_bytes = args.min_segment_bytes
        t0 = time.time()
        proxy = assemble.make_proxy(c, os.path.join(workdir, name))
        fx = proxy.encode_batch(docs)
        fy = proxy.encode_batch(edited)
        scores = [edit_distance(a, b) / max(len(a), len(b), 1) for a, b in zip(fx, fy)]
        ratio = sum(len(d) for d in docs) / sum(len(a) for a in fx)
        rows.append((name, float(np.mean(scores)), float(np.std(scores) / np.sqrt(len(scores))), ratio,
                     time.time() - t0))
    print(f"{len(docs)} held-out stdlib files, first {args.max_bytes} bytes each, {args.fraction:.0%} of "
          f"characters deleted (seed {args.seed})\n")
    print("| proxy | normalised edit distance f(x) vs f(x') | +- s.e. | bytes per id | seconds |")
    print("|---|---|---|---|---|")
    for name, mean, se, ratio, secs in rows:
        print(f"| {name} | {mean:.3f} | {se:.3f} | {ratio:.2f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
