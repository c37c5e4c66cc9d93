"""proxy_jax: proxy compression for language modeling in JAX.

Layout, in the order data flows: ``vocab`` -> ``proxies`` -> ``data`` -> ``model`` -> ``train`` -> ``evaluate``.
"""

__version__ = "0.1.0"
