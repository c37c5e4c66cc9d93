"""Compile the training step ahead of time for a TPU topology (or this host's devices) without the chips.

    pip install libtpu   # gives the TPU compiler; no TPU needed
    python launch/aot_compile.py --config=configs/proxy_tokens.py:1.5b --topology=v5p:4x4x4 \
        [--mesh=-1,1,1] [--override model.remat_policy=dots]
    python launch/aot_compile.py --config=configs/proxy_tokens.py:tiny --topology=host   # smoke test

Catches sharding mistakes, out-of-memory layouts and compile errors on a CPU host before a pod is
reserved; prints the per-device memory the compiled step needs. The proxy's vocabulary is taken from
--vocab_symbols (default: 4096 tokenizer pieces), so no tokenizer is trained. A bad value ends with one
``error:`` sentence and exit status 2, as the package's commands do (``proxy_jax.cli``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_value(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="configs/FILE.py:PRESET")
    p.add_argument("--topology", default="host", help="'host' (this machine's devices) or a TPU topology "
                   "such as v5p:2x2x2, v5e:4x4, v4:2x2x2")
    p.add_argument("--mesh", default="", help="mesh shape as data,fsdp,tensor (default: the config's)")
    p.add_argument("--vocab_symbols", type=int, default=4096, help="compressed symbols of the proxy")
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE config override (repeatable)")
    args = p.parse_args()

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from proxy_jax import model as model_lib
    from proxy_jax import optimizer as opt_lib
    from proxy_jax import config as config_lib
    from proxy_jax import recipes, sharding, train_step, vocab

    bad = [kv for kv in args.override if "=" not in kv]
    if bad:
        raise ValueError(f"--override {bad[0]!r} is not KEY=VALUE; write e.g. --override model.remat_policy=dots.")
    overrides = dict(kv.split("=", 1) for kv in args.override)
    config = recipes.load_config(args.config, **{k: parse_value(v) for k, v in overrides.items()})
    if args.mesh:
        try:
            config.mesh.shape = tuple(int(x) for x in args.mesh.split(","))
        except ValueError:
            raise ValueError(f"--mesh={args.mesh!r} is not three integers data,fsdp,tensor; write e.g. "
                             "--mesh=-1,1,1.") from None
    if args.topology == "host":
        devices = jax.devices()
    else:
        from jax.experimental import topologies

        try:
            devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
        except Exception as e:  # noqa: BLE001 - the compiler plug-in is missing or the name is wrong
            raise ValueError(f"--topology={args.topology!r} cannot be described ({e}); install libtpu "
                             "(pip install libtpu) and use names like v5p:2x2x2.") from None
    sharding.validate(config, len(devices), process_count=1)
    true_vocab = vocab.vocab_size(args.vocab_symbols)
    model_args = model_lib.ModelArgs.from_config(config.model, true_vocab,
                                                 platform=devices[0].platform)  # scan_layers "auto": the target's
    model = model_lib.Transformer(model_args)
    mesh = sharding.make_mesh(config, devices=devices)
    tx, _ = opt_lib.make_optimizer(config.opt, config.train.steps)
    abstract_state, shardings = sharding.abstract_train_state(config, model, tx, mesh)
    step = train_step.make_train_step(config, model, tx, mesh, shardings, true_vocab)
    rows, length = config.data.batch_size, config.data.seq_len + config_lib.num_targets(config.model)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=batch_sharding)
             for k in train_step.MODEL_KEYS}
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config)):
        compiled = step.jitted.lower(abstract_state, batch).compile()
    print(f"compiled {args.config} for {args.topology} ({len(devices)} devices, mesh "
          f"{dict(mesh.shape)}) in {time.perf_counter() - t0:.1f} s; "
          f"{model_lib.count_params(model_args) / 1e6:.1f}M parameters")
    mem = compiled.memory_analysis()
    if mem is not None:
        total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                 - mem.alias_size_in_bytes)
        print(f"per-device memory: {total / 2**30:.2f} GiB (arguments {mem.argument_size_in_bytes / 2**30:.2f}, "
              f"temporaries {mem.temp_size_in_bytes / 2**30:.2f})")
    # XLA's count is of the per-device program and includes remat recomputation; custom kernels (splash)
    # count only if they carry a cost estimate. The formula counts useful work once (model.flops_per_token).
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float((cost or {}).get("flops", float("nan")))
    formula = model_lib.flops_per_token(model_args, config.data.seq_len) * config.data.batch_size * config.data.seq_len
    print(f"per-device FLOPs per step: XLA cost analysis {xla_flops:.4g}, formula {formula / len(devices):.4g} "
          f"(ratio {xla_flops / (formula / len(devices)):.3f})")


if __name__ == "__main__":
    from proxy_jax import cli

    cli.run_command(main)
