"""Time to the first batch and host memory when a corpus is many small files (JSONL or Parquet).

    python launch/bench_index.py [--files 5000] [--docs_per_file 10] [--doc_bytes 1000] [--indexes full,lazy]
                                 [--rows_per_group 0] [--read_docs 2000] [--url]

Writes ``--files`` generated files of each kind into a temporary folder, then, in a fresh process per
kind and ``data.index`` (``full`` reads every document, ``lazy`` metadata only; ``auto`` is ``lazy`` from
1,000 files on): indexes the training split (``corpus.load_split``), builds the pipeline (bytes only, 8 x 4096) and
takes the first batch. Prints one JSON line per kind: seconds to index, seconds to the first batch
(index included), both also in CPU-seconds (what a shared machine distorts less), the index's memory
(tracemalloc, bytes still held by the source), the process's peak resident memory, and documents read per
second in a shuffled order (``--read_docs`` of them, from a fresh copy of the source as a Grain worker gets
it) by one thread and by as many threads as the pipeline reads with.

With ``--url`` the corpus is uploaded to the local Cloud Storage server of ``tests/gcs_emulator.py`` (needs the
``[gcs]`` and test extras) and read as ``gs://runs/bench/<kind>``; each line then also gives the object
storage requests per random read (``requests_per_read``, counted at gcsfs' request call, one thread) and the
milliseconds per random read (``ms_per_read``), beside the same corpus read from local disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_corpus(folder: str, kind: str, files: int, docs: int, size: int, rows_per_group: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for f in range(files):
        texts = [bytes(rng.integers(32, 127, size, dtype=np.uint8)).decode() for _ in range(docs)]
        path = os.path.join(folder, f"part-{f:05d}.{kind}")
        if kind == "jsonl":
            with open(path, "w") as fh:
                fh.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.table({"text": texts}), path, row_group_size=rows_per_group or None)


def read_rate(source, count: int, threads: int) -> float:
    """Documents per second read in a shuffled order by ``threads`` threads from a fresh copy of ``source``."""
    import concurrent.futures
    import pickle

    import numpy as np

    order = np.random.default_rng(1).permutation(len(source))[:count].tolist()
    fresh = pickle.loads(pickle.dumps(source))
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fresh.__getitem__, order):
            pass
    return len(order) / (time.perf_counter() - start)


def request_count() -> list[int]:
    """A counter of gcsfs' HTTP requests in this process (a one-item list, increased by every request)."""
    import gcsfs.core

    count = [0]
    call = gcsfs.core.GCSFileSystem._call

    async def counted(self, *args, **kwargs):
        count[0] += 1
        return await call(self, *args, **kwargs)

    gcsfs.core.GCSFileSystem._call = counted
    return count


def measure(kind: str, folder: str, index: str, read_docs: int) -> dict:
    from proxy_jax import recipes
    from proxy_jax.data import corpus, packing, pipeline

    config = recipes.load_config(os.path.join(ROOT, "configs/bytes.py:tiny"), **{
        "data.source": kind, "data.path": folder, "data.seq_len": 4096, "data.batch_size": 8,
        "data.max_doc_bytes": 0, "data.index": index, "model.num_pred_heads": 1, "model.num_raw_pred_heads": 0})
    import pyarrow.parquet  # noqa: F401 - imported before the clock starts, as a training process has
    start, cpu0 = time.perf_counter(), time.process_time()
    source = corpus.load_split(config.data, "train")
    indexed, index_cpu = time.perf_counter() - start, time.process_time() - cpu0
    next(iter(pipeline.make_pipeline(config, "train", source=source, process_index=0, process_count=1)))
    first, first_cpu = time.perf_counter() - start, time.process_time() - cpu0
    requests = request_count() if "://" in folder else [0]
    rates = {f"read_docs_per_s_{n}_threads": round(read_rate(source, read_docs, n))
             for n in (1, packing._READ_THREADS)}
    if "://" in folder:  # the first rate's reads: one thread, shuffled
        requests[0] = 0
        one = read_rate(source, read_docs, 1)
        rates.update(ms_per_read=round(1000 / one, 2), requests_per_read=round(requests[0] / min(read_docs,
                                                                                                  len(source)), 2))
    # The index's memory, from a second load under tracemalloc (which slows allocation, so it is not timed).
    # Not for a bucket: Arrow's I/O threads release the Python buffers of its reads, and CPython 3.11's
    # tracemalloc crashes when a thread without a Python thread state makes one (the index is the same object).
    del source
    remote = "://" in folder
    if not remote:
        tracemalloc.start()
    source = corpus.load_split(config.data, "train")
    held = None if remote else tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"kind": kind, "index": index, "documents": len(source), "index_s": round(indexed, 2), "index_cpu_s": round(index_cpu, 2),
            "first_batch_s": round(first, 2), "first_batch_cpu_s": round(first_cpu, 2),
            "index_mb": None if held is None else round(held / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--docs_per_file", type=int, default=10)
    parser.add_argument("--doc_bytes", type=int, default=1000)
    parser.add_argument("--kinds", default="jsonl,parquet")
    parser.add_argument("--indexes", default="full,lazy")
    parser.add_argument("--rows_per_group", type=int, default=0, help="Parquet row groups (0: one per file)")
    parser.add_argument("--read_docs", type=int, default=2000)
    parser.add_argument("--url", action="store_true", help="also read the corpus from the local storage emulator")
    parser.add_argument("--_measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        kind, folder, index, read_docs = args._measure
        print(json.dumps(measure(kind, folder, index, int(read_docs))))
        return
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        env = None
        if args.url:
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            import gcs_emulator

            os.makedirs(os.path.join(tmp, "gcs"))
            served = stack.enter_context(gcs_emulator.running(os.path.join(tmp, "gcs")))
            env = {**served["env"], "PROXY_JAX_DATA_CACHE": os.path.join(tmp, "cache")}
        for kind in args.kinds.split(","):
            folder = os.path.join(tmp, kind)
            write_corpus(folder, kind, args.files, args.docs_per_file, args.doc_bytes, args.rows_per_group)
            places = [folder]
            if args.url:
                served["fs"].put(folder, f"runs/bench/{kind}", recursive=True)
                places.append(f"gs://runs/bench/{kind}")
            for index in args.indexes.split(","):
                for place in places:
                    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_measure", kind, place, index,
                                          str(args.read_docs)], check=True, capture_output=True, text=True, env=env)
                    print(json.dumps({"files": args.files, "docs_per_file": args.docs_per_file,
                                      "doc_bytes": args.doc_bytes, "rows_per_group": args.rows_per_group,
                                      "where": "bucket" if "://" in place else "local",
                                      **json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)

if __name__ == "__main__":
    main()
