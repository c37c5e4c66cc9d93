"""Compiled memory of one training step with and without the chunked loss (``model.loss_chunk``).

    python launch/bench_loss_chunk.py --size small --seq_len 2048 --batch 4 --vocab_symbols 96640 \
        --chunks 0,512,2048

Compiles the full train step (forward, backward, AdamW update) for this host's first device with
abstract inputs and prints XLA's ``memory_analysis()``: temporaries (activations, logits, gradients
in flight) and the total with arguments. Nothing is run, so it works for shapes that would not fit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", help="a key of proxy_jax.recipes.SIZES")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab_symbols", type=int, default=96_640, help="compressed symbols (96,640: OpenCoder)")
    p.add_argument("--chunks", default="0,512,2048", help="comma-separated loss_chunk values (0 = off)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--remat", default="none")
    args = p.parse_args()

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from proxy_jax import config as config_lib
    from proxy_jax import model as model_lib
    from proxy_jax import optimizer as opt_lib
    from proxy_jax import recipes, sharding, train_step, vocab

    for chunk in (int(x) for x in args.chunks.split(",")):
        c = config_lib.base_config()
        recipes.apply_size(c, args.size)
        c.model.dtype, c.model.remat_policy, c.model.loss_chunk = args.dtype, args.remat, chunk
        c.data.seq_len, c.data.batch_size, c.mesh.shape = args.seq_len, args.batch, (1, 1, 1)
        c.model.num_pred_heads, c.model.num_raw_pred_heads = 1, 1
        true_vocab = vocab.vocab_size(args.vocab_symbols)
        model = model_lib.Transformer(model_lib.ModelArgs.from_config(c.model, true_vocab))
        mesh = sharding.make_mesh(c, devices=jax.devices()[:1])
        tx, _ = opt_lib.make_optimizer(c.opt, c.train.steps)
        state, shardings = sharding.abstract_train_state(c, model, tx, mesh)
        step = train_step.make_train_step(c, model, tx, mesh, shardings, true_vocab)
        shape = (args.batch, args.seq_len + config_lib.num_targets(c))
        batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh))
                 for k in train_step.MODEL_KEYS}
        t0 = time.perf_counter()
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(c)):
            mem = step.jitted.lower(state, batch).compile().memory_analysis()
        total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
        print(f"loss_chunk={chunk}: temporaries {mem.temp_size_in_bytes / 2**30:.3f} GiB, total {total / 2**30:.3f} GiB "
              f"(padded vocab {model.args.padded_vocab_size}, {model_lib.count_params(model.args) / 1e6:.1f}M "
              f"parameters; compiled in {time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
