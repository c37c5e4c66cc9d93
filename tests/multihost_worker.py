"""One process of the multi-process training check (launched by tests/test_multihost.py).

``--mode worker``: process ``--process_id`` of 2, with 2 CPU devices, joins the coordinator and trains
3 steps on its own half of every global batch (its rows from the real input pipeline, globalised with
``sharding.host_to_global``). ``--mode reference``: one process with 4 CPU devices and the same mesh
trains on the two halves concatenated. Both write the per-step metrics as JSON to ``--out``.
"""

import argparse
import json
import os
import sys


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("worker", "reference"), required=True)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    return p.parse_args()


def config():
    from proxy_jax import config as config_lib

    c = config_lib.base_config()
    c.proxy.name = "gzip"  # deterministic and fast, and it puts compressed targets in the batches
    c.data.seq_len, c.data.batch_size, c.data.max_doc_bytes = 32, 8, 2000
    c.model.dtype = "float32"
    c.model.num_kv_heads = 2
    c.model.num_raw_pred_heads = 1
    c.mesh.shape = (2, 2, 1)
    c.opt.warmup_steps, c.train.steps = 1, 10
    return c


def main():
    args = parse()
    devices = 2 if args.mode == "worker" else 4
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import jax
    import numpy as np

    if args.mode == "worker":
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}", num_processes=2, process_id=args.process_id,
            initialization_timeout=120,
        )
    from proxy_jax import model as model_lib
    from proxy_jax import optimizer as optimizer_lib
    from proxy_jax import sharding as sharding_lib
    from proxy_jax import train_step as train_step_lib
    from proxy_jax import vocab
    from proxy_jax.data import pipeline as pipeline_lib

    c = config()
    sharding_lib.validate(c, jax.device_count())
    vocab_size = vocab.vocab_size(256)
    model = model_lib.Transformer(model_lib.ModelArgs.from_config(c.model, vocab_size))
    tx, schedule = optimizer_lib.make_optimizer(c.opt, c.train.steps)
    mesh = sharding_lib.make_mesh(c)
    state, shardings = sharding_lib.init_train_state(c, model, tx, mesh, jax.random.key(c.seed))
    step = train_step_lib.make_train_step(c, model, tx, mesh, shardings, vocab_size, schedule)

    if args.mode == "worker":
        hosts = [args.process_id]
    else:
        hosts = [0, 1]
    from proxy_jax.proxies import GzipProxy

    iters = [iter(pipeline_lib.make_pipeline(c, proxy=GzipProxy(), process_index=h, process_count=2)) for h in hosts]
    history = []
    for _ in range(args.steps):
        parts = [next(it) for it in iters]
        local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, metrics = step(state, sharding_lib.host_to_global(local, mesh))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    # Raw-byte evaluation as the trainer runs it: every process builds the same batches, each feeds its rows.
    from proxy_jax import assemble
    from proxy_jax import text_format
    from proxy_jax.evaluation import bpb

    c.train.eval_window, c.train.eval_batch_size = 64, 4
    eval_step = train_step_lib.make_eval_step(c, model, mesh, shardings, vocab_size)
    docs = [d[:300] for d in assemble.heldout_docs(c, 6)]
    evaluation = bpb.model_bpb(eval_step, state.params, mesh, docs, config=c, fmt=text_format.of_mix(c.mix),
                               progress=False)
    with open(args.out, "w") as f:
        json.dump({"process_count": jax.process_count(), "devices": jax.device_count(), "metrics": history,
                   "eval": evaluation}, f)
    if args.mode == "worker":
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
