"""One process of the elastic-resume check (launched by tests/test_elastic.py).

Process ``--process_id`` of ``--num_processes`` (each with ``2 / num_processes`` CPU devices, so every
run has the same (2, 1, 1) mesh) trains ``configs``' tiny gzip run in ``--workdir`` with
``proxy_jax.train.train`` for ``--stop_after`` steps, resuming from the workdir's checkpoint when there
is one. Metrics go to the workdir's ``metrics.jsonl`` (process 0).
"""

import argparse
import os
import sys


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--workdir", required=True)
    p.add_argument("--stop_after", type=int, required=True)
    p.add_argument("--virtual_shards", type=int, default=4)
    p.add_argument("--mixture", default="", help="a data.mixture file to train on instead of the standard library")
    return p.parse_args()


def config(virtual_shards, mixture=""):
    from proxy_jax import config as config_lib

    c = config_lib.base_config()
    c.proxy.name = "gzip"  # deterministic, no training, and it puts compressed targets in the batches
    c.data.seq_len, c.data.batch_size, c.data.max_doc_bytes = 32, 4, 600
    c.data.virtual_shards = virtual_shards
    c.data.mixture = mixture
    c.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64)
    c.model.dtype = "float32"
    c.mesh.shape = (2, 1, 1)
    c.opt.warmup_steps, c.train.steps = 1, 4
    c.train.update(log_every=1, checkpoint_every=100, eval_every=0, tensorboard=False, sample_bytes=0)
    return c


def main():
    args = parse()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={2 // args.num_processes}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import jax

    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
            process_id=args.process_id, initialization_timeout=120,
        )
    from proxy_jax import train

    train.train(config(args.virtual_shards, args.mixture), args.workdir, progress=False, stop_after=args.stop_after)
    if args.num_processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
