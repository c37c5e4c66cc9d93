"""Small M1 models for the neural proxy tests: random-init (fast) and briefly trained (slow tests)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from helpers import stdlib_paths
from proxy_jax import config as config_lib
from proxy_jax import vocab
from proxy_jax.model import ModelArgs, Transformer


def stdlib_files() -> list[str]:
    return [str(p) for p in stdlib_paths()]


def tiny_args(d_model: int = 32, num_layers: int = 1) -> ModelArgs:
    c = config_lib.base_config().model
    c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.d_ff = num_layers, d_model, 2, 2, 16, 2 * d_model
    c.dtype, c.scan_layers = "float32", False
    return ModelArgs.from_config(c, vocab.RAW_VOCAB_SIZE)


def init_params(args: ModelArgs, seed: int = 0):
    """Random parameters in numpy with the model's tree structure (shapes by tracing, no compile)."""
    z = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda key: nn.unbox(Transformer(args).init(key, z, z + 1, z)["params"]), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if len(s.shape) == 1 or "norm" in name:
            return np.zeros(s.shape, s.dtype)
        if "embedding" in name:
            return rng.normal(0.0, 1.0, s.shape).astype(s.dtype)
        std = (2.0 if "head" in name else 1.0) / np.sqrt(s.shape[0])  # fan-in first (layers are not scanned)
        return rng.normal(0.0, std, s.shape).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def train_params(args: ModelArgs, files: list[str], *, steps: int = 200, seq_len: int = 64, batch: int = 16, seed: int = 0):
    """A few hundred Adam steps on raw stdlib bytes (BOS-prefixed windows)."""
    data = np.frombuffer(b"".join(open(f, "rb").read() for f in files), np.uint8).astype(np.int32) + vocab.BYTE_OFFSET
    model = Transformer(args)
    params = init_params(args, seed)
    tx = optax.adam(3e-3)
    opt = tx.init(params)
    pos = jnp.broadcast_to(jnp.arange(seq_len), (batch, seq_len))
    ones = jnp.ones((batch, seq_len), jnp.int32)

    @jax.jit
    def step(params, opt, x):
        def loss(p):
            logits, _ = model.apply({"params": p}, x[:, :-1], ones, pos)
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :, 0], x[:, 1:]).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(data) - seq_len - 1, batch)
        x = np.stack([data[s : s + seq_len + 1] for s in starts])
        x[:, 0] = vocab.BOS
        params, opt, value = step(params, opt, jnp.asarray(x))
    return params, float(value) / np.log(2)
