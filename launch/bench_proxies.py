"""Measures the proxies, corpus indexing and preprocessing on the standard-library corpus.

    python launch/bench_proxies.py [--out=/tmp/bench_proxies]

Prints a Markdown table: tokenizer training time (vocab 1024 and 4096, whole training split and a
10 MB cap), bytes per symbol on the held-out split for every proxy, encode throughput, preprocessing
throughput, record decoding throughput, and JSONL indexing speed on a ~100 MB file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from absl import flags


CPU_SECONDS = []  # CPU time of each timed call (all threads), printed beside the wall time


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    CPU_SECONDS.append(time.process_time() - c)
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/bench_proxies")
    args = ap.parse_args()
    flags.FLAGS.mark_as_parsed()
    from proxy_jax.config import base_config
    from proxy_jax.data import corpus, records
    from proxy_jax.preprocess import preprocess
    from proxy_jax.proxies import GzipProxy, TokensAsBytesProxy, train_tokenizer, TokenizerProxy

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    c = base_config()
    train, val = corpus.load_split(c.data, "train"), corpus.load_split(c.data, "validation")
    train_docs, val_docs = list(train), list(val)
    val_bytes = sum(map(len, val_docs))
    rows = [f"corpus: {len(train)} train / {len(val)} held-out files, {train.stats['bytes'] / 1e6:.1f} MB / "
            f"{val_bytes / 1e6:.2f} MB", "", "| measurement | value |", "|---|---|"]

    toks = {}
    for vocab, cap in ((1024, 10_000_000), (4096, 10_000_000), (4096, 50_000_000)):
        path, dt = _timed(lambda: train_tokenizer(train_docs, vocab, f"{args.out}/tok{vocab}-{cap}", cap))
        used = min(cap, train.stats["bytes"])
        rows.append(f"| train BPE vocab {vocab} on {used / 1e6:.1f} MB | {dt:.1f} s |")
        toks[(vocab, cap)] = TokenizerProxy.from_file(path)

    def ratio(proxy, per_token=1):
        ids, dt = _timed(lambda: proxy.encode_batch(val_docs))
        n = sum(x.size for x in ids) / per_token
        return val_bytes / n, val_bytes / dt / 1e6

    for (vocab, cap), tok in toks.items():
        r, mbs = ratio(tok)
        rows.append(f"| tokenizer v{vocab} ({cap / 1e6:.0f} MB cap): held-out bytes/token, encode | "
                    f"{r:.3f} B/token, {mbs:.2f} MB/s |")
    tok = toks[(4096, 50_000_000)]
    r, mbs = ratio(TokensAsBytesProxy(tok, gray_code=True))
    rows.append(f"| tokens_as_bytes v4096 gray: held-out bytes/symbol, encode | {r:.3f} B/symbol, {mbs:.2f} MB/s |")
    r, mbs = ratio(GzipProxy(9))
    rows.append(f"| gzip -9: held-out bytes/symbol, encode | {r:.3f} B/symbol, {mbs:.2f} MB/s |")
    _, dt = _timed(lambda: [tok.decode(x) for x in tok.encode_batch(val_docs)])
    rows.append(f"| tokenizer v4096 encode+decode of held-out split | {val_bytes / dt / 1e6:.2f} MB/s |")

    _, dt = _timed(lambda: corpus.load_split(c.data, "train"))
    rows.append(f"| index stdlib corpus (load_split) | {dt:.2f} s |")

    c.proxy.name, c.proxy.vocab_size = "tokenizer", 4096
    out = f"{args.out}/shards"
    m, dt = _timed(lambda: preprocess(c, out, cache_dir=f"{args.out}/work", num_shards=4, progress_bar=False))
    total = sum(v["bytes"] for v in m["splits"].values())
    rows.append(f"| preprocess stdlib, tokenizer v4096 (incl. training), 4 shards, 1 process | {dt:.1f} s, "
                f"{total / dt / 1e6:.2f} MB/s |")
    _, dt2 = _timed(lambda: preprocess(c, out, cache_dir=f"{args.out}/work", num_shards=4, progress_bar=False))
    rows.append(f"| rerun on finished shards (verification only) | {dt2:.2f} s |")
    d = c.data.copy_and_resolve_references()
    d.source, d.path = "preprocessed", out
    pre = corpus.load_split(d, "train")
    blobs, dt_read = _timed(lambda: [pre.encoded(i) for i in range(len(pre))])
    recs, dt_dec = _timed(lambda: [records.decode_record(b) for b in blobs])
    nsym = sum(r.comp.size for r in recs)
    rows.append(f"| read {len(pre)} records from shards / decode them | {nsym / dt_read / 1e6:.1f} M / "
                f"{nsym / dt_dec / 1e6:.0f} M symbols/s |")

    jpath = f"{args.out}/big.jsonl"
    with open(jpath, "w", encoding="utf-8") as f:
        size = 0
        while size < 100_000_000:
            for doc in train_docs:
                line = json.dumps({"text": doc.decode("utf-8", "replace")}) + "\n"
                f.write(line)
                size += len(line)
                if size >= 100_000_000:
                    break
    dj = c.data.copy_and_resolve_references()
    dj.source, dj.path = "jsonl", jpath
    src, dt = _timed(lambda: corpus.load_split(dj, "train"))
    mb = os.path.getsize(jpath) / 1e6
    rows.append(f"| index a {mb:.0f} MB JSONL file ({len(src)} train lines) | {dt:.1f} s, {mb / dt:.0f} MB/s |")
    _, dt = _timed(lambda: [src[i] for i in range(0, len(src), 7)])
    rows.append(f"| random access into it | {len(range(0, len(src), 7)) / dt:.0f} docs/s |")
    print("\n".join(rows))
    print(f"\nCPU seconds of the timed calls, in order: {', '.join(f'{x:.1f}' for x in CPU_SECONDS)}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
