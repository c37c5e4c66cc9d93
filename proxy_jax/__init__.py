"""proxy_jax: proxy compression for language modeling in JAX.

Layers, each importing only from those before it: ``vocab``/``config`` -> ``model`` (a leaf network
library) -> ``proxies`` -> ``data`` -> steps, sharding, checkpoints, ``run_record`` -> ``workdir`` /
``restore`` -> ``assemble`` -> ``train`` / ``evaluation.score`` -> commands (``main``, ``evaluate``,
``preprocess``, ``export``).
"""

__version__ = "0.1.0"
