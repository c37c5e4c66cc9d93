"""M1's forward speed per position by row length: what bounds the neural proxy's two passes.

    python launch/bench_m1_rows.py [--preset tiny] [--tile_positions 2048] [--tiles 4]

Runs the proxy's own tiled calls on random bytes (random-init M1 of a ``configs/m1.py`` preset) for rows
of 8, 12, 16, 24 and 256 bytes, ``tile_positions`` positions per tile: the entropy pass
(``m1.tile_entropies``, rows of ``chunk_bytes``, 256 for ``tiny``) and the coding pass's M1 tables
(``m1.tile_tables``, rows of a segment's length bucket). Prints positions per second (best of 3 timings
of 10 calls) beside the matmul-only floor of one position (``2 x`` matmul parameters at the best of 5
1024 x 1024 matmul timings): short rows show what M1 costs without attention, 256-byte rows what the
entropy pass's dense attention adds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--tile_positions", type=int, default=2048)
    ap.add_argument("--tiles", type=int, default=4, help="tiles per call")
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from proxy_jax import model as model_lib
    from proxy_jax import vocab
    from proxy_jax.proxies.neural import m1 as m1_lib

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("m1_config", os.path.join(here, "..", "configs", "m1.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    margs = model_lib.ModelArgs.from_config(mod.get_config(args.preset).model, vocab.RAW_VOCAB_SIZE)
    z = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(model_lib.Transformer(margs).init(jax.random.key(0), z, z + 1, z)["params"])
    m1 = m1_lib.M1.from_params(margs, params)
    device_params = jax.device_put(m1.params)
    bench_neural = importlib.util.spec_from_file_location("bench_neural", os.path.join(here, "bench_neural.py"))
    bn = importlib.util.module_from_spec(bench_neural)
    bench_neural.loader.exec_module(bn)
    peak = bn.matmul_flops_per_s()
    floor = peak / (2 * model_lib.count_params(m1.args, include_embedding=False))

    def rate(fn, tokens) -> float:
        fn(tokens).block_until_ready()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(10):
                out = fn(tokens)
            out.block_until_ready()
            best = min(best, (time.perf_counter() - t) / 10)
        return tokens.size / best

    rng = np.random.default_rng(0)
    out = {"device": str(jax.devices()[0].device_kind), "load_average_1min": round(os.getloadavg()[0], 2),
           "matmul_flops_per_s": peak, "matmul_floor_positions_per_s": floor, "rows": {}}
    for length in (8, 12, 16, 24, 256):
        rows = m1_lib.tile_rows(length, args.tile_positions)
        tokens = jnp.asarray(rng.integers(vocab.BYTE_OFFSET, vocab.BYTE_OFFSET + 256, (args.tiles, rows, length)),
                             jnp.int32)
        out["rows"][length] = {
            "entropy_pass_positions_per_s": rate(lambda t: m1_lib.tile_entropies(m1.args, device_params, t), tokens),
            "coding_tables_positions_per_s": rate(
                lambda t: m1_lib.tile_tables(m1.args, device_params, t, precision=16), tokens),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
