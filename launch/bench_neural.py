"""Throughput of the neural proxy: raw bytes compressed per second, beside M1's FLOP floor.

    python launch/bench_neural.py --m1_workdir=/tmp/m1_tiny [--bytes 200000] [--chunk_bytes 256]
    python launch/bench_neural.py --preset 6m --device      # random-init M1 of that size, on the accelerator
    python launch/bench_neural.py --throughput_only         # speeds only: no analysis of where the bits go

Codes ``--bytes`` of held-out stdlib text twice (the first run compiles and is not timed) and prints
bytes/s for the whole ``encode_batch`` (entropy pass + coding pass + coder + host work) and for its parts,
the XLA compilations during the timed run (0: every shape was compiled by the first run) and the
machine's load average (other jobs on the same cores slow it down). ``--device`` runs the same code on
the default accelerator; raise ``--tile_positions`` there (it is part of the view's definition).
The FLOP floor is the fastest any implementation could run on this device: two M1 forward passes per
byte (entropy and coding) of ``2 * N`` FLOPs each (N = parameters in matmuls, embedding excluded) plus
attention (``4 * layers * heads * head_dim * L / 2`` per byte over a causal window of L), divided into
the matmul rate this script measures on the same device (the best of 5 timings).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def matmul_flops_per_s(n: int = 1024, reps: int = 20, trials: int = 5) -> float:
    """The device's float32 matmul rate: the best of ``trials`` timings of ``reps`` products (one timing
    can land on a busy moment; the floor is the fastest the device runs)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a)
        out.block_until_ready()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m1_workdir", default="", help="a trained M1; without it a random-init --preset M1")
    ap.add_argument("--preset", default="tiny", help="configs/m1.py preset for a random-init M1")
    ap.add_argument("--bytes", type=int, default=200_000)
    ap.add_argument("--chunk_bytes", type=int, default=256)
    ap.add_argument("--min_segment_bytes", type=int, default=1)
    ap.add_argument("--batch_rows", type=int, default=64, help="rows of chunk_bytes per M1 call (speed only)")
    ap.add_argument("--tile_positions", type=int, default=2048, help="bytes per M1 tile (proxy.m1_tile_positions)")
    ap.add_argument("--exact", action="store_true", help="also count exact-arithmetic windows (slow)")
    ap.add_argument("--throughput_only", action="store_true",
                    help="skip the untimed analysis of where the bits go (ideal bits per byte; fewer compiles)")
    ap.add_argument("--device", action="store_true", help="run on the default accelerator (else force CPU)")
    args = ap.parse_args()

    import os

    if not args.device:
        os.environ["JAX_PLATFORMS"] = "cpu"
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import jax

    from proxy_jax import config as config_lib
    from proxy_jax import model as model_lib
    from proxy_jax import vocab
    from proxy_jax import restore as restore_lib
    from proxy_jax.data import corpus
    from proxy_jax.proxies.neural import NeuralProxy, quantize, reference, segment
    from proxy_jax.proxies.neural import m1 as m1_lib

    if args.m1_workdir:
        m1 = restore_lib.load_m1(args.m1_workdir)
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("m1_config", os.path.join(os.path.dirname(__file__), "..",
                                                                                 "configs", "m1.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        c = mod.get_config(args.preset)
        margs = model_lib.ModelArgs.from_config(c.model, vocab.RAW_VOCAB_SIZE)
        z = jax.numpy.zeros((1, 8), jax.numpy.int32)
        import flax.linen as nn

        params = nn.unbox(model_lib.Transformer(margs).init(jax.random.key(0), z, z + 1, z)["params"])
        m1 = m1_lib.M1.from_params(margs, params, context=c.data.seq_len)
    proxy = NeuralProxy(m1, chunk_bytes=args.chunk_bytes, min_segment_bytes=args.min_segment_bytes,
                        batch_rows=args.batch_rows, tile_positions=args.tile_positions)
    val = corpus.load_split(config_lib.base_config().data, "validation")
    docs, total = [], 0
    for i in range(len(val)):
        d = bytes(val[i])[: args.bytes - total]
        if d:
            docs.append(d)
            total += len(d)
        if total >= args.bytes:
            break
    proxy.fit_threshold(docs[:8])

    def run():
        t0 = time.perf_counter()
        segs = proxy.segments(docs)
        t1 = time.perf_counter()
        coded = proxy.encode_segments([s for ss in segs for s in ss])
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, segs, coded

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(secs) if event == "/jax/core/compile/backend_compile_duration" else None)
    run()  # compile every bucket shape
    n_compiles_first = len(compiles)
    load_before = os.getloadavg()[0]
    t_seg, t_code, segs, coded = run()
    load_after = os.getloadavg()[0]
    n_compiles_timed = len(compiles) - n_compiles_first
    n_ids = sum(len(c[0]) for c in coded)
    n_windows = sum(int((c[0] >= vocab.COMP_OFFSET).sum()) for c in coded)
    n_segs = sum(len(s) for s in segs)

    ideal_bits = chunk_ideal = 0.0
    exact_windows = 0
    if not args.throughput_only:
        # Where the bits go (untimed): ideal -log2 q of every byte under its segment's tables, and the windows
        # an exact-arithmetic coder with the same rule would emit (reference.exact_window_count).
        flat = [s for ss in segs for s in ss]
        ideal_bits, exact_windows = 0.0, 0
        for idx, _, tokens, data in m1_lib.batches(flat, args.batch_rows, args.chunk_bytes):
            freq, _ = m1_lib.tables(m1.args, proxy._params, tokens, precision=proxy.precision)
            freq = np.asarray(freq)
            for j, i in enumerate(idx):
                n = len(flat[i])
                ideal_bits += float(quantize.ideal_bits_np(freq[j, :n], data[j, :n]).sum())
                if args.exact:
                    exact_windows += reference.exact_window_count(data[j, :n], freq[j, :n])[0]
        rows = [c for d in docs for c in segment.chunks(d, args.chunk_bytes)]
        chunk_ideal = 0.0  # the same with M1's context running over whole chunks (no segment restarts)
        for idx, _, tokens, data in m1_lib.batches(rows, args.batch_rows, args.chunk_bytes):
            freq = np.asarray(m1_lib.tables(m1.args, proxy._params, tokens, precision=proxy.precision)[0])
            for j, i in enumerate(idx):
                n = len(rows[i])
                chunk_ideal += float(quantize.ideal_bits_np(freq[j, :n], data[j, :n]).sum())
    args_m = m1.args
    n_params = model_lib.count_params(args_m, include_embedding=False)
    attn = 4 * args_m.num_layers * args_m.num_heads * args_m.head_dim * args.chunk_bytes / 2
    flops_per_byte = 2 * (2 * n_params + attn)
    peak = matmul_flops_per_s()
    result = {
        "device": str(jax.devices()[0].device_kind),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "compiles_first_run": n_compiles_first,
        "compiles_timed_run": n_compiles_timed,
        "tile_positions": args.tile_positions,
        "m1_params_total": model_lib.count_params(args_m),
        "m1_params_in_matmuls": n_params,
        "bytes": total,
        "documents": len(docs),
        "segments": n_segs,
        "mean_segment_bytes": total / n_segs,
        "ids": n_ids,
        "bytes_per_id": total / n_ids,
        "windows": n_windows,
        "passthrough_bytes": n_ids - n_windows,
        "bits_per_byte_of_view": 16 * n_ids / total,
        "ideal_bits_per_byte_segment_context": None if args.throughput_only else ideal_bits / total,
        "ideal_bits_per_byte_chunk_context": None if args.throughput_only else chunk_ideal / total,
        "exact_arithmetic_windows": exact_windows if args.exact else None,
        "entropy_pass_bytes_per_s": total / t_seg,
        "coding_pass_bytes_per_s": total / t_code,
        "encode_bytes_per_s": total / (t_seg + t_code),
        "m1_flops_per_byte": flops_per_byte,
        "matmul_flops_per_s": peak,
        "flop_floor_bytes_per_s": peak / flops_per_byte,
        "encode_fraction_of_floor": total / (t_seg + t_code) / (peak / flops_per_byte),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
