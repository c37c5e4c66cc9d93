"""Byte-level text generation: the model reads ``1 12 <prompt bytes>`` and writes raw bytes.

Prompts of different lengths share one batch by left-padding: padding slots have segment id 0 (no
one attends to them) and every row's positions start at 0 on its own BOS, so a row's output does not
depend on its neighbours (except under EVA attention, whose windows are aligned to absolute slots:
there the amount of left padding moves a row's window boundaries; cached and recomputed generation
still agree exactly). Each step samples from main head 0 restricted to raw bytes (64..319) plus
the two stop ids ``</raw>`` and EOS; a row that draws a stop id, or whose text contains one of the
``stop`` strings, is finished (the stop id or string is not part of the returned text). Greedy when
``temperature == 0``; otherwise temperature scaling followed by nucleus (top-p) sampling.

``use_cache=True`` feeds the prompt once and then one byte per step against the KV cache;
``use_cache=False`` recomputes the full forward pass every step (the reference the cache is tested
against). Both paths are jitted with fixed shapes, so each compiles once per batch/length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import vocab
from proxy_jax.model import ModelArgs, Transformer, init_cache

STOP_IDS = (vocab.RAW_CLOSE, vocab.EOS)


def allowed_mask(padded_vocab_size: int) -> np.ndarray:
    ids = np.arange(padded_vocab_size)
    allowed = (ids >= vocab.BYTE_OFFSET) & (ids < vocab.COMP_OFFSET)
    allowed[list(STOP_IDS)] = True
    return allowed


def sample_next(logits_BxV, rng, temperature, top_p, *, greedy: bool):
    """Next id per row from head-0 logits, only bytes and stop ids allowed."""
    allowed = jnp.asarray(allowed_mask(logits_BxV.shape[-1]))
    logits_BxV = jnp.where(allowed, logits_BxV.astype(jnp.float32), -jnp.inf)
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV / temperature
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    sorted_BxV = jnp.sort(probs_BxV, axis=-1)[:, ::-1]
    # Keep the smallest set of most likely ids whose mass reaches top_p (always at least one).
    before_BxV = jnp.cumsum(sorted_BxV, axis=-1) - sorted_BxV
    kept = jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf)
    threshold_Bx1 = jnp.min(kept, axis=-1, keepdims=True)
    logits_BxV = jnp.where(probs_BxV >= threshold_Bx1, logits_BxV, -jnp.inf)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=8)
def _step_fns(args: ModelArgs, greedy: bool):
    model = Transformer(args)

    @jax.jit
    def prefill(params, cache, tokens_BxP, segment_ids_BxP, positions_BxP, rng, temperature, top_p):
        (logits, _), mutated = model.apply(
            {"params": params, "cache": cache}, tokens_BxP, segment_ids_BxP, positions_BxP,
            decode=True, mutable=["cache"],
        )
        nxt = sample_next(logits[:, -1, 0], rng, temperature, top_p, greedy=greedy)
        return nxt, mutated["cache"]

    @jax.jit
    def full(params, tokens_BxL, segment_ids_BxL, positions_BxL, index, rng, temperature, top_p):
        logits, _ = model.apply({"params": params}, tokens_BxL, segment_ids_BxL, positions_BxL)
        last_BxV = jax.lax.dynamic_index_in_dim(logits[:, :, 0], index, axis=1, keepdims=False)
        return sample_next(last_BxV, rng, temperature, top_p, greedy=greedy)

    return prefill, full


def _first_stop(text: bytes, stop) -> int:
    cut = [text.find(s) for s in stop if s and s in text]
    return min(cut) if cut else -1


def generate(
    model: Transformer,
    params,
    prompts: list[bytes],
    *,
    max_new_bytes: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng=None,
    use_cache: bool = True,
    stop=(),
) -> list[bytes]:
    """Continue each prompt by up to ``max_new_bytes`` bytes; returns the new bytes of every prompt."""
    if not prompts:
        return []
    if max_new_bytes < 1:
        raise ValueError(f"max_new_bytes={max_new_bytes} must be >= 1.")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy).")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must lie in (0, 1].")
    greedy = temperature == 0.0
    if not greedy and rng is None:
        raise ValueError("Sampling with temperature > 0 needs rng=jax.random.key(seed).")
    rng = jax.random.key(0) if rng is None else rng
    stop = tuple(bytes(s) for s in stop)

    ids = [np.concatenate([[vocab.BOS, vocab.RAW_OPEN], vocab.encode_raw(p)]).astype(np.int32) for p in prompts]
    b, plen = len(ids), max(len(x) for x in ids)
    total = plen + max_new_bytes
    tokens = np.zeros((b, total), np.int32)
    segments = np.zeros((b, total), np.int32)
    positions = np.zeros((b, total), np.int32)
    for row, x in enumerate(ids):
        tokens[row, plen - len(x) : plen] = x
        segments[row, plen - len(x) :] = 1
        positions[row, plen - len(x) :] = np.arange(total - (plen - len(x)))

    prefill, full = _step_fns(model.args, greedy)
    temperature_ = jnp.float32(max(temperature, 1e-6))
    top_p_ = jnp.float32(top_p)
    out = [bytearray() for _ in range(b)]
    done = np.zeros(b, bool)
    cache = None
    for i in range(max_new_bytes):
        rng, key = jax.random.split(rng)
        t = plen + i  # slot the new token goes to
        if not use_cache:
            masked_segments = np.where(np.arange(total) < t, segments, 0)
            nxt = full(params, tokens, masked_segments, positions, t - 1, key, temperature_, top_p_)
        elif i == 0:
            cache = init_cache(model, b, total)
            nxt, cache = prefill(
                params, cache, tokens[:, :plen], segments[:, :plen], positions[:, :plen], key, temperature_, top_p_
            )
        else:
            nxt, cache = prefill(
                params, cache, tokens[:, t - 1 : t], segments[:, t - 1 : t], positions[:, t - 1 : t], key,
                temperature_, top_p_,
            )
        nxt = np.asarray(nxt)
        tokens[:, t] = nxt
        for row in np.flatnonzero(~done):
            if nxt[row] in STOP_IDS:
                done[row] = True
                continue
            out[row].append(int(nxt[row]) - vocab.BYTE_OFFSET)
            if stop and _first_stop(bytes(out[row]), stop) >= 0:
                done[row] = True
        if done.all():
            break
    results = []
    for text in out:
        text = bytes(text)
        cut = _first_stop(text, stop)
        results.append(text if cut < 0 else text[:cut])
    return results
