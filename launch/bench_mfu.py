"""Model FLOPs utilisation of one training step, per attention implementation.

    python launch/bench_mfu.py                                  # 0.5B, seq_len 4096, bf16, xla + cudnn
    python launch/bench_mfu.py --size tiny --seq_len 128 --batch 8 --steps 3 --attention xla   # CPU smoke

MFU = flops_per_token(args, seq_len) * batch * seq_len / step_time / (peak FLOP/s per chip * chips),
with ``model.flops_per_token`` (6 N + 12 layers heads head_dim seq_len; recomputation from remat is
not counted as useful work). Peaks are dense bf16 from the vendors' data sheets; on a CPU (or an
unknown device) the script prints "no peak for cpu" and the step time only. Inputs are synthetic:
random raw bytes in documents of ``--doc_len`` tokens, so attention masks have real document
boundaries. Steps are timed after ``--warmup`` untimed steps, with the device synchronised each step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

def peak_flops(device) -> float | None:
    """Peak bf16 FLOP/s of ``device`` (the table in proxy_jax.metrics), or None when unknown (CPU)."""
    from proxy_jax import metrics

    return metrics.peak_flops_per_device(device)


def synthetic_batch(batch: int, length: int, doc_len: int, seed: int = 0) -> dict:
    import numpy as np

    from proxy_jax import vocab

    rng = np.random.default_rng(seed)
    tokens = rng.integers(vocab.BYTE_OFFSET, vocab.COMP_OFFSET, size=(batch, length), dtype=np.int32)
    index = np.arange(length)
    segments = np.broadcast_to((index // doc_len + 1).astype(np.int32), (batch, length)).copy()
    positions = np.broadcast_to((index % doc_len).astype(np.int32), (batch, length)).copy()
    tokens[:, index % doc_len == 0] = vocab.BOS
    return {"tokens": tokens, "segment_ids": segments, "positions": positions}


def bench_one(args, attention: str) -> dict:
    import jax
    import numpy as np

    from proxy_jax import config as config_lib
    from proxy_jax import model as model_lib
    from proxy_jax import recipes
    from proxy_jax import optimizer as optimizer_lib
    from proxy_jax import sharding as sharding_lib
    from proxy_jax import train_step as train_step_lib

    c = config_lib.base_config()
    recipes.apply_size(c, args.size)
    c.model.attention = attention
    c.model.dtype = args.dtype
    c.model.remat_policy = args.remat
    c.model.loss_chunk = args.loss_chunk
    c.model.scan_layers = True
    c.data.seq_len, c.data.batch_size = args.seq_len, args.batch
    c.mesh.shape = (1, -1, 1)  # FSDP over every device
    c.train.steps = 1000
    devices = jax.devices()[: args.num_devices or None]
    sharding_lib.validate(c, len(devices))
    margs = model_lib.ModelArgs.from_config(c.model, args.vocab_size)
    model = model_lib.Transformer(margs)
    tx, schedule = optimizer_lib.make_optimizer(c.opt, c.train.steps)
    mesh = sharding_lib.make_mesh(c, devices=devices)
    state, shardings = sharding_lib.init_train_state(c, model, tx, mesh, jax.random.key(0))
    step = train_step_lib.make_train_step(c, model, tx, mesh, shardings, args.vocab_size, schedule)
    batch = sharding_lib.host_to_global(
        synthetic_batch(args.batch, args.seq_len + config_lib.num_targets(c.model), min(args.doc_len, args.seq_len)), mesh
    )

    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = args.batch * args.seq_len
    flops = model_lib.flops_per_token(margs, args.seq_len) * tokens
    peak = peak_flops(jax.devices()[0])
    result = {
        "size": args.size,
        "attention": attention,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "dtype": args.dtype,
        "remat": args.remat,
        "device": jax.devices()[0].device_kind,
        "devices": len(devices),
        "params": model_lib.count_params(margs),
        "first_step_s": round(compile_s, 3),
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "model_tflops_per_s": flops / step_s / 1e12,
        "loss": float(metrics["loss"]),
        "mfu": None if peak is None else flops / step_s / (peak * len(devices)),
    }
    return result


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="0.5B", help="a key of proxy_jax.recipes.SIZES")
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4, help="global batch (rows)")
    p.add_argument("--vocab_size", type=int, default=96960, help="320 + proxy symbols (default: a 96,640-id BPE)")
    p.add_argument("--attention", default="xla,cudnn", help="comma-separated implementations to time")
    p.add_argument("--num_devices", type=int, default=0, help="use the first N devices (0 = all)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--remat", default="dots_with_no_batch_dims")
    p.add_argument("--loss_chunk", type=int, default=0, help="model.loss_chunk (0 = whole-batch logits)")
    p.add_argument("--doc_len", type=int, default=2048, help="tokens per synthetic document")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args(argv)

    import jax

    results = []
    for attention in [a for a in args.attention.split(",") if a]:
        if attention == "cudnn" and jax.default_backend() != "gpu":
            print(f"attention=cudnn needs a GPU; skipped on {jax.default_backend()}")
            continue
        if attention == "splash" and jax.default_backend() != "tpu":
            print(f"attention=splash needs a TPU; skipped on {jax.default_backend()}")
            continue
        r = bench_one(args, attention)
        results.append(r)
        line = (f"{r['size']} attention={attention} seq_len={r['seq_len']} batch={r['batch']} "
                f"on {r['devices']}x {r['device']}: step {r['step_s'] * 1e3:.1f} ms, "
                f"{r['tokens_per_s']:,.0f} tokens/s, {r['model_tflops_per_s']:.2f} model TFLOP/s, ")
        if r["mfu"] is None:
            line += f"no peak for {jax.devices()[0].platform}"
        else:
            line += f"MFU {100 * r['mfu']:.1f}%"
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
