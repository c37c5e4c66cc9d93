"""Splash attention per shard (``shard_map`` over a 2x2x2 mesh), run by the Pallas interpreter."""

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import config as config_lib
from proxy_jax import sharding as sharding_lib
from proxy_jax.model import attention as attention_lib


def test_splash_per_shard_matches_xla_attention():
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(0)
    b, length, heads, kv_heads, d = 4, 128, 4, 2, 32
    q = jnp.asarray(rng.normal(size=(b, length, heads, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, length, kv_heads, d)), jnp.float32) for _ in range(2))
    segments = np.ones((b, length), np.int32)
    segments[:, 50:], segments[:, 100:], segments[1, 110:] = 2, 3, 0
    want = np.asarray(attention_lib.attention(q, k, v, segments, segments, "xla"))
    real = segments != 0  # splash lets padding attend to padding; those rows are never used
    config = config_lib.base_config()
    config.mesh.shape = (2, 2, 2)
    with jax.set_mesh(sharding_lib.make_mesh(config)):
        sharded = jax.jit(lambda *x: attention_lib.splash_attention(*x, interpret=True))
        np.testing.assert_allclose(np.asarray(sharded(q, k, v, segments, segments))[real], want[real], atol=2e-5)
