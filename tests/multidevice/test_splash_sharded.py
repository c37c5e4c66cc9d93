"""Splash attention per shard (``shard_map`` over a 2x2x2 mesh), run by the Pallas interpreter."""

import jax
import numpy as np

from helpers import packed_attention_inputs
from proxy_jax import config as config_lib
from proxy_jax import sharding as sharding_lib
from proxy_jax.model import attention as attention_lib


def test_splash_per_shard_matches_xla_attention():
    assert len(jax.devices()) == 8
    q, k, v, segments = packed_attention_inputs()
    want = np.asarray(attention_lib.attention(q, k, v, segments, segments, "xla"))
    real = segments != 0  # splash lets padding attend to padding; those rows are never used
    config = config_lib.base_config()
    config.mesh.shape = (2, 2, 2)
    with jax.set_mesh(sharding_lib.make_mesh(config)):
        sharded = jax.jit(lambda *x: attention_lib.splash_attention(*x, interpret=True))
        np.testing.assert_allclose(np.asarray(sharded(q, k, v, segments, segments))[real], want[real], atol=2e-5)
