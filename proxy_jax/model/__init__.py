"""The decoder-only Transformer that reads bytes and compressed symbols from one embedding table.

Architecture: the paper's EvaByte decoder with exact attention in place of EVA's pooled summaries of
distant chunks: pre-norm blocks, RMSNorm with a ``(1 + w)`` scale (``w`` starts at 0), SwiGLU MLP, rotary position embeddings driven by the per-document ``positions`` input, optional
grouped-query attention, no biases, untied output heads. Parameters are float32; compute runs in
``config.model.dtype`` (bfloat16 by default); attention logits and softmax are always float32.

Attention stays inside each document: query i may attend to key j only when ``j <= i``, both carry
the same segment id, and that id is not 0 (padding). Three implementations sit behind the single
function :func:`attention`: ``"xla"`` (plain einsums, runs everywhere), ``"cudnn"`` (GPU flash
attention through ``jax.nn.dot_product_attention``) and ``"splash"`` (Pallas splash attention, TPU).
``"eva"`` is the paper's EVA attention (``proxy_jax.model.eva``, same document rules): exact keys
inside aligned windows of ``eva_window`` tokens, learned pooled summaries of ``eva_chunk`` keys
before them; each layer then has parameters ``eva_mu``, ``eva_phi`` ([kv_heads, head_dim]).

Outputs: ``num_pred_heads`` main heads over the full (padded) vocabulary, head ``h`` predicting the
token ``h + 1`` places ahead, and ``num_raw_pred_heads`` extra 320-way heads that continue the chain
(raw head ``j`` predicts ``num_pred_heads + j + 1`` places ahead) over specials and raw bytes only.

Every parameter carries logical axis names (``embed``, ``vocab``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``layers``); ``config.mesh.rules`` maps them onto the device mesh.
Activations use ``batch``/``length`` plus ``act_*`` names that are unsharded unless a rule says so.

With ``decode=True`` the attention layers keep a key/value cache in the ``"cache"`` collection
(``cached_key``, ``cached_value``, ``cached_segment_ids``, ``cache_index``): create it by running
``init`` (or ``jax.eval_shape`` of it) on inputs of the full generation length, then feed the prompt
(any length) and afterwards one token per call with ``mutable=["cache"]``. EVA layers keep instead
``eva_*`` variables (an ``EvaCache``: one window of keys and values plus one summary per chunk) and
need the prompt in the first call (it is the prefill) and then exactly one token per call.
"""

from proxy_jax.model.args import ATTENTION_IMPLS, REMAT_POLICIES, ModelArgs, count_params, flops_per_token
from proxy_jax.model.transformer import Transformer, head_logits, init_cache

__all__ = ["ATTENTION_IMPLS", "REMAT_POLICIES", "ModelArgs", "Transformer", "count_params", "flops_per_token",
           "head_logits", "init_cache"]
