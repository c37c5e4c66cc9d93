"""Our training step against a minimal plain-JAX step of the same shape, timed side by side.

    python launch/bench_step.py                                  # both shapes, float32 and bfloat16
    python launch/bench_step.py --shapes d128x4 --dtypes float32 --steps 20
    python launch/bench_step.py --variants default,scan,noscan   # also force model.scan_layers each way

"Ours" is ``train_step.make_train_step`` built as a run builds it: the base config with the shape set,
the default model switches (``model.scan_layers`` "auto", which unrolls these depths on a CPU;
``remat_policy`` "none"; ``loss_chunk`` 0) unless a variant forces scanning on or off, AdamW with gradient clipping from ``config.opt``, parameters from ``sharding.init_train_state``.
"Plain" is written here from scratch as pure functions over a dict of arrays: the same architecture
(embedding, pre-norm RMSNorm blocks, RoPE attention with causal document masking, SwiGLU MLP, final
norm, one output head over the same padded vocabulary with the padded rows masked, mean cross-entropy
over non-pad targets), layers as a Python loop, and ``optax.chain(clip_by_global_norm, adamw)`` with the
same hyper-parameters and schedule. It starts from our initial parameters, and the script checks that
both compute the same loss on the first batch before timing anything (the reference computes what ours
does, so the ratio is about how, not what).

Timing is interleaved: after ``--warmup`` untimed steps of each, every round runs one step of each (the
order alternating between rounds), each synchronised with ``block_until_ready``; the table shows the
median step time of each and ``ratio`` = our speed / the plain step's speed (plain median / our median).
On a shared machine interleaving keeps the ratio fair when the load changes; the absolute times are not.

Shapes: ``d128x4``: d_model 128, 4 layers, 4 heads x 32, d_ff 512 (the ``tiny`` preset's widths), seq 256,
batch 8; ``d512x6``: d_model 512, 6 layers, 8 heads x 64, d_ff 2048 (the ``small`` preset), seq 512, batch 4.
The vocabulary is the default proxy's (320 + 4,096 BPE symbols = 4,416, padded to 4,480). Inputs are
random raw bytes in documents of ``--doc_len`` tokens, so the document mask has real boundaries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name: (d_model, num_layers, num_heads, head_dim, d_ff, seq_len, batch)
SHAPES = {
    "d128x4": (128, 4, 4, 32, 512, 256, 8),
    "d512x6": (512, 6, 8, 64, 2048, 512, 4),
}
# variant: model.scan_layers forced (None = the config's default)
VARIANTS = {"default": None, "scan": True, "noscan": False}


# Rows of random raw bytes in documents of ``doc_len`` tokens (BOS first), as the pipeline lays them out.
from bench_mfu import synthetic_batch  # noqa: E402 - the script's folder is on sys.path


# ---- ours ------------------------------------------------------------------------------------------------

def our_config(shape: str, dtype: str, scan):
    from proxy_jax import config as config_lib

    d, layers, heads, head_dim, d_ff, seq_len, batch = SHAPES[shape]
    c = config_lib.base_config()
    m = c.model
    m.d_model, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim, m.d_ff = d, layers, heads, heads, head_dim, d_ff
    m.dtype = dtype
    if scan is not None:
        m.scan_layers = scan
    c.data.seq_len, c.data.batch_size, c.mesh.shape = seq_len, batch, (1, 1, 1)
    return c


def build_ours(c, logical_vocab: int, padded_vocab: int):
    """``(step_fn, state, model)`` exactly as ``assemble.build`` makes them, on this host's first device."""
    import jax

    from proxy_jax import model as model_lib
    from proxy_jax import optimizer as optimizer_lib
    from proxy_jax import sharding, train_step

    args = model_lib.ModelArgs.from_config(c.model, logical_vocab, padded_vocab_size=padded_vocab)
    model = model_lib.Transformer(args)
    mesh = sharding.make_mesh(c, devices=jax.devices()[:1])
    tx, schedule = optimizer_lib.make_optimizer(c.opt, c.train.steps)
    state, shardings = sharding.init_train_state(c, model, tx, mesh, jax.random.key(c.seed))
    step = train_step.make_train_step(c, model, tx, mesh, shardings, logical_vocab, schedule)
    return step, state, model


# ---- plain JAX ---------------------------------------------------------------------------------------------

def plain_params(our_params, num_layers: int) -> dict:
    """Our parameter tree as a flat dict of arrays per layer (copies: our step donates its state)."""
    import jax
    import jax.numpy as jnp

    p = jax.tree.map(jnp.array, our_params)
    if "layers" in p:
        layers = [jax.tree.map(lambda x, i=i: x[i], p["layers"]) for i in range(num_layers)]
    else:
        layers = [p[f"layer_{i}"] for i in range(num_layers)]
    flat = lambda l: {  # noqa: E731
        "norm1": l["attn_norm"]["scale"], "wq": l["attn"]["query"], "wk": l["attn"]["key"],
        "wv": l["attn"]["value"], "wo": l["attn"]["out"], "norm2": l["mlp_norm"]["scale"],
        "w_gate": l["mlp"]["gate"], "w_up": l["mlp"]["up"], "w_down": l["mlp"]["down"]}
    return {"embed": p["embedding"], "blocks": [flat(l) for l in layers], "norm_f": p["final_norm"]["scale"],
            "unembed": p["head"][:, 0, :]}


def make_plain_step(c, logical_vocab: int):
    """``step(params, opt_state, count, batch) -> (params, opt_state, loss)``, jitted, params donated."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    m, o = c.model, c.opt
    dt = jnp.dtype(m.dtype)
    eps, theta = float(m.norm_eps), float(m.rope_theta)

    def rms(x, w):
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
        return (x * (1.0 + w)).astype(dt)

    def rope(x, pos):
        half = x.shape[-1] // 2
        inv = theta ** (-np.arange(half, dtype=np.float32) * 2 / x.shape[-1])
        ang = pos.astype(jnp.float32)[:, :, None, None] * inv
        s, co = jnp.sin(ang), jnp.cos(ang)
        xf = x.astype(jnp.float32)
        a, b = xf[..., :half], xf[..., half:]
        return jnp.concatenate([a * co - b * s, b * co + a * s], axis=-1).astype(dt)

    def block(x, blk, mask, pos):
        h = rms(x, blk["norm1"])
        q = rope(jnp.einsum("btd,dhk->bthk", h, blk["wq"].astype(dt)), pos)
        k = rope(jnp.einsum("btd,dhk->bthk", h, blk["wk"].astype(dt)), pos)
        v = jnp.einsum("btd,dhk->bthk", h, blk["wv"].astype(dt))
        s = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) / np.float32(np.sqrt(q.shape[-1]))
        s = jnp.where(mask[:, None], s, jnp.finfo(jnp.float32).min)
        a = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(s, axis=-1).astype(dt), v)
        x = x + jnp.einsum("bthk,hkd->btd", a, blk["wo"].astype(dt))
        h = rms(x, blk["norm2"])
        g = jax.nn.silu(h @ blk["w_gate"].astype(dt)) * (h @ blk["w_up"].astype(dt))
        return x + g @ blk["w_down"].astype(dt)

    def loss_fn(params, batch):
        tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
        length = tokens.shape[1] - 1
        inp, seg_in, pos_in, tgt = tokens[:, :length], seg[:, :length], pos[:, :length], tokens[:, 1:]
        t = jnp.arange(length)
        mask = (t[None, :, None] >= t[None, None, :]) & (seg_in[:, :, None] == seg_in[:, None, :]) & (
            seg_in[:, None, :] != 0)
        x = params["embed"].astype(dt)[inp]
        for blk in params["blocks"]:
            x = block(x, blk, mask, pos_in)
        x = rms(x, params["norm_f"])
        logits = jnp.einsum("btd,dv->btv", x, params["unembed"].astype(dt), preferred_element_type=jnp.float32)
        logits = jnp.where(jnp.arange(logits.shape[-1]) < logical_vocab, logits, jnp.finfo(jnp.float32).min)
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        active = (tgt != 0) & (seg_in != 0)
        return jnp.sum(jnp.where(active, nll, 0.0)) / jnp.maximum(jnp.sum(active), 1)

    schedule = optax.warmup_cosine_decay_schedule(0.0, float(o.lr), int(o.warmup_steps),
                                                  max(int(c.train.steps), int(o.warmup_steps) + 1),
                                                  float(o.lr) * float(o.min_lr_ratio))
    tx = optax.chain(optax.clip_by_global_norm(float(o.clip_norm)),
                     optax.adamw(schedule, b1=float(o.b1), b2=float(o.b2), eps=float(o.eps),
                                 weight_decay=float(o.weight_decay),
                                 mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)))

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), tx, jax.jit(loss_fn)


# ---- the comparison --------------------------------------------------------------------------------------

def compare(shape: str, dtype: str, variant: str, args) -> dict:
    import jax
    import numpy as np

    from proxy_jax import config as config_lib
    from proxy_jax import vocab

    c = our_config(shape, dtype, VARIANTS[variant])
    logical, padded = vocab.vocab_size(args.vocab_symbols), vocab.padded_vocab_size(args.vocab_symbols)
    ours, state, model = build_ours(c, logical, padded)
    scan = model.args.scan_layers
    plain, tx, plain_loss = make_plain_step(c, logical)
    params = plain_params(state.params, model.args.num_layers)
    opt_state = tx.init(params)
    seq_len, batch = c.data.seq_len, c.data.batch_size
    assert config_lib.num_targets(c.model) == 1
    host = synthetic_batch(batch, seq_len + 1, min(args.doc_len, seq_len))
    dev = jax.device_put(host, jax.devices()[0])

    # Same computation: the plain loss of our initial parameters equals our first step's loss.
    first_plain = float(plain_loss(params, dev))
    t0 = time.perf_counter()
    state, metrics = ours(state, dev)
    first_ours = float(metrics["loss"])
    compile_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    params, opt_state, loss = plain(params, opt_state, dev)
    jax.block_until_ready(loss)
    compile_plain = time.perf_counter() - t0
    tol = 1e-5 if dtype == "float32" else 2e-2
    if abs(first_ours - first_plain) > tol * abs(first_plain):
        raise SystemExit(f"{shape} {dtype}: our first loss {first_ours!r} is not the plain step's {first_plain!r} "
                         f"(relative tolerance {tol}); the two steps do not compute the same thing.")

    def run_ours():
        nonlocal state
        t = time.perf_counter()
        state, out = ours(state, dev)
        jax.block_until_ready(out)
        return time.perf_counter() - t

    def run_plain():
        nonlocal params, opt_state
        t = time.perf_counter()
        params, opt_state, out = plain(params, opt_state, dev)
        jax.block_until_ready(out)
        return time.perf_counter() - t

    for _ in range(args.warmup):
        run_ours()
        run_plain()
    times_ours, times_plain = [], []
    for i in range(args.steps):
        if i % 2:
            times_plain.append(run_plain())
            times_ours.append(run_ours())
        else:
            times_ours.append(run_ours())
            times_plain.append(run_plain())
    med_ours, med_plain = statistics.median(times_ours), statistics.median(times_plain)
    return {"shape": shape, "dtype": dtype, "variant": variant, "scan": scan, "remat": c.model.remat_policy,
            "loss_chunk": int(c.model.loss_chunk), "ours_ms": 1e3 * med_ours, "plain_ms": 1e3 * med_plain,
            "ratio": med_plain / med_ours, "loss_ours": first_ours, "loss_plain": first_plain,
            "compile_ours_s": compile_ours, "compile_plain_s": compile_plain,
            "spread": float(np.std(np.array(times_plain) / np.array(times_ours)))}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="d128x4,d512x6", help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--variants", default="default", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--vocab_symbols", type=int, default=4096, help="compressed symbols (the default proxy: 4,096)")
    p.add_argument("--doc_len", type=int, default=128, help="tokens per synthetic document")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps of each (medians)")
    args = p.parse_args(argv)

    import jax

    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}", flush=True)
    print(f"{'shape':8} {'dtype':9} {'variant':8} {'scan':5} {'remat':5} {'chunk':5} {'ours ms':>8} "
          f"{'plain ms':>8} {'ratio':>6}  first loss (ours / plain)  compile s (ours / plain)", flush=True)
    rows = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            for variant in args.variants.split(","):
                r = compare(shape, dtype, variant, args)
                rows.append(r)
                print(f"{shape:8} {dtype:9} {variant:8} {str(r['scan']):5} {r['remat']:5} {r['loss_chunk']:5} "
                      f"{r['ours_ms']:8.1f} {r['plain_ms']:8.1f} {r['ratio']:6.2f}  "
                      f"{r['loss_ours']:.6f} / {r['loss_plain']:.6f}   {r['compile_ours_s']:.1f} / "
                      f"{r['compile_plain_s']:.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
