"""The neural proxy: a small byte LM (M1) + arithmetic coding with equal-information windows.

Modules: ``quantize`` (probabilities -> integer frequencies), ``coder`` (the jitted coder),
``reference`` (the same rule in plain Python, and the decoder), ``m1`` (loading and running M1),
``segment`` (entropy segmentation), ``proxy`` (:class:`NeuralProxy`), ``interop`` (the reference's
``m1_ac_ow16`` JSONL field).
"""

from proxy_jax.proxies.neural.proxy import NeuralCode, NeuralProxy

__all__ = ["NeuralCode", "NeuralProxy"]
