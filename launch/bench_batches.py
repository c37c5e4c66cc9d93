"""How well the rows of a batch are spread over documents, what it costs, before and after row streams.

    python launch/bench_batches.py                              # this tree, stdlib + long-tailed corpus
    python launch/bench_batches.py --before c0fd7df             # and the same on an older commit

Bytes-only batches of 8 x 4096 (``configs/bytes.py:tiny``, documents not cut). For each batch: the
source documents under the first token of its rows (distinct count; a batch whose rows all start in one
document is a single-document batch), found from the packer's ``on_document`` hook. Also symbols/s of
the packed batches (in-process, no workers, after the split is loaded) and the host memory the iterator
holds (tracemalloc: peak during the batches, and what it still holds at the end). Corpora: the standard
library's ``.py`` files, and a JSONL corpus of 600 documents with lognormal lengths (median 6 kB,
sigma 1.2: a tail past 100 kB, like code corpora). Prints one JSON line per (code, corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def long_tailed_jsonl(path: str, n: int = 600, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = np.maximum(1, rng.lognormal(np.log(6000), 1.2, n).astype(int))
    with open(path, "w") as f:
        for size in sizes:
            f.write(json.dumps({"text": bytes(rng.integers(32, 127, size, dtype=np.uint8)).decode()}) + "\n")


def measure(root: str, corpus_name: str, jsonl: str, batches: int, L: int, B: int) -> dict:
    """Runs in the code tree first on ``sys.path``; returns the measurements."""
    import numpy as np

    from proxy_jax import recipes
    from proxy_jax.data import corpus, pipeline

    overrides = {"data.seq_len": L, "data.batch_size": B, "data.max_doc_bytes": 0,
                 "model.num_pred_heads": 1, "model.num_raw_pred_heads": 0}
    if corpus_name == "longtail":
        overrides.update({"data.source": "jsonl", "data.path": jsonl, "data.val_fraction": 0.0})
    config = recipes.load_config(os.path.join(root, "configs/bytes.py:tiny"), **overrides)
    source = corpus.load_split(config.data, "train")
    placed: dict[int, list[tuple[int, int]]] = {}  # row stream -> [(start, document index)]

    def hook(**d):
        placed.setdefault(d.get("row", 0), []).append((d["start"], d["index"]))

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    it = iter(pipeline.make_pipeline(config, "train", source=source, process_index=0, process_count=1,
                                      on_document=hook))
    start = time.perf_counter()
    for _ in range(batches):
        next(it)  # not kept: the memory measured is what the iterator holds
    seconds = time.perf_counter() - start
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows_are_streams = len(placed) > 1  # row streams: row r is stream r; else rows cut one stream
    distinct = []
    for k in range(batches):
        first = []
        for r in range(B):
            stream, pos = (r, k * L) if rows_are_streams else (0, (k * B + r) * L)
            first.append(max((s, i) for s, i in placed[stream] if s <= pos)[1])
        distinct.append(len(set(first)))
    return {"corpus": corpus_name, "documents": len(source), "batches": batches, "rows": B, "seq_len": L,
            "distinct_docs_per_batch": round(float(np.mean(distinct)), 3),
            "single_doc_batches_pct": round(100.0 * float(np.mean(np.array(distinct) == 1)), 2),
            "symbols_per_s": round(batches * B * L / seconds), "held_mb": round((held - base) / 2**20, 1),
            "peak_mb": round((peak - base) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="", help="a commit to measure too (extracted with git archive)")
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--corpora", default="stdlib,longtail")
    parser.add_argument("--_root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--_corpus", default="", help=argparse.SUPPRESS)
    parser.add_argument("--_jsonl", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._root:  # one measurement, in a child process importing that tree
        sys.path.insert(0, args._root)
        print(json.dumps(measure(args._root, args._corpus, args._jsonl, args.batches, args.seq_len, args.rows)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = os.path.join(tmp, "longtail.jsonl")
        long_tailed_jsonl(jsonl)
        trees = [("this tree", ROOT)]
        if args.before:
            before = os.path.join(tmp, "before")
            os.makedirs(before)
            archive = subprocess.run(["git", "-C", ROOT, "archive", args.before], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", before], input=archive.stdout, check=True)
            trees.insert(0, (args.before, before))
        for name, tree in trees:
            for corpus_name in args.corpora.split(","):
                cmd = [sys.executable, os.path.abspath(__file__), "--_root", tree, "--_corpus", corpus_name,
                       "--_jsonl", jsonl, "--batches", str(args.batches), "--seq_len", str(args.seq_len),
                       "--rows", str(args.rows)]
                result = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree)
                print(json.dumps({"code": name, **json.loads(result.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
