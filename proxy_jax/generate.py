"""Text generation in a run's text format: the model reads ``prefix + <prompt>`` and writes text ids.

Prompts of different lengths share one batch by left-padding: padding slots have segment id 0 (no
one attends to them) and every row's positions start at 0 on its own BOS, so a row's output does not
depend on its neighbours (except under EVA attention, whose windows are aligned to absolute slots:
there the amount of left padding moves a row's window boundaries; cached and recomputed generation
still agree exactly). Each step samples from main head 0 restricted to the ids the run's text format
may write (``proxy_jax.text_format``: raw bytes 64..319 and its stop ids, or for ``compressed`` the
symbols and EOS); a row that draws a stop id, or whose text contains one of the ``stop`` strings, is
finished (the stop id or string is not part of the returned text). Greedy when ``temperature == 0``;
otherwise temperature scaling followed by nucleus (top-p) sampling.

``generate_ids`` is the same loop over id sequences: the caller gives the prompt ids, the allowed-id
mask, the stop ids and an ``is_done`` test of a row's new ids (the tokenizer baseline generates token
ids with it, the oracle-translation probe compressed symbols). ``generate`` is ``generate_ids`` in a text
format (default ``sentinel``: prompt ``1 12 <prompt bytes>``): its prompt prefix, allowed ids, stop ids
and decoding, and stop strings.

``use_cache=True`` feeds the prompt once and then one byte per step against the KV cache;
``use_cache=False`` recomputes the full forward pass every step (the reference the cache is tested
against). Both paths are jitted with fixed shapes, so each compiles once per batch/length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import text_format as text_format_lib
from proxy_jax.model import ModelArgs, Transformer, init_cache

SENTINEL = text_format_lib.SENTINEL


def sample_next(logits_BxV, rng, temperature, top_p, *, greedy: bool, allowed_V=None):
    """Next id per row from head-0 logits, only the ids of ``allowed_V`` (default: the ``sentinel`` format's)."""
    size = logits_BxV.shape[-1]
    allowed = jnp.asarray(SENTINEL.allowed_mask(size, size) if allowed_V is None else allowed_V)
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
    def prefill(params, cache, tokens_BxP, segment_ids_BxP, positions_BxP, rng, temperature, top_p, allowed_V):
        (logits, _), mutated = model.apply(
            {"params": params, "cache": cache}, tokens_BxP, segment_ids_BxP, positions_BxP,
            decode=True, mutable=["cache"],
        )
        nxt = sample_next(logits[:, -1, 0], rng, temperature, top_p, greedy=greedy, allowed_V=allowed_V)
        return nxt, mutated["cache"]

    @jax.jit
    def full(params, tokens_BxL, segment_ids_BxL, positions_BxL, index, rng, temperature, top_p, allowed_V):
        logits, _ = model.apply({"params": params}, tokens_BxL, segment_ids_BxL, positions_BxL)
        last_BxV = jax.lax.dynamic_index_in_dim(logits[:, :, 0], index, axis=1, keepdims=False)
        return sample_next(last_BxV, rng, temperature, top_p, greedy=greedy, allowed_V=allowed_V)

    return prefill, full


def first_stop(text: bytes, stop) -> int:
    """Offset of the earliest of the ``stop`` strings in ``text``, or -1."""
    cut = [text.find(s) for s in stop if s and s in text]
    return min(cut) if cut else -1


def cut_at_stop(text: bytes, stop) -> bytes:
    """``text`` up to (not including) its earliest stop string."""
    cut = first_stop(text, stop)
    return text if cut < 0 else text[:cut]


def _check(max_new: int, temperature: float, top_p: float, rng) -> None:
    if max_new < 1:
        raise ValueError(f"max_new_bytes={max_new} must be >= 1.")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy).")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must lie in (0, 1].")
    if temperature > 0 and rng is None:
        raise ValueError("Sampling with temperature > 0 needs rng=jax.random.key(seed).")


def generate_ids(
    model: Transformer,
    params,
    prompt_ids: list[np.ndarray],
    *,
    max_new_ids: int,
    allowed_V: np.ndarray,
    stop_ids=SENTINEL.stop_ids,
    is_done=None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng=None,
    use_cache: bool = True,
) -> list[np.ndarray]:
    """Continue each id sequence by up to ``max_new_ids`` ids drawn from ``allowed_V`` (bool [vocab]).

    A row ends at a stop id (not returned) or once ``is_done(new_ids)`` is true. Returns the new ids.
    """
    if not prompt_ids:
        return []
    _check(max_new_ids, temperature, top_p, rng)
    greedy = temperature == 0.0
    rng = jax.random.key(0) if rng is None else rng
    stop_ids = {int(s) for s in stop_ids}
    allowed_V = jnp.asarray(allowed_V)

    ids = [np.asarray(x, np.int32) for x in prompt_ids]
    b, plen = len(ids), max(len(x) for x in ids)
    total = plen + max_new_ids
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
    out = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    cache = None
    for i in range(max_new_ids):
        rng, key = jax.random.split(rng)
        t = plen + i  # slot the new token goes to
        if not use_cache:
            masked_segments = np.where(np.arange(total) < t, segments, 0)
            nxt = full(params, tokens, masked_segments, positions, t - 1, key, temperature_, top_p_, allowed_V)
        elif i == 0:
            cache = init_cache(model, b, total)
            nxt, cache = prefill(params, cache, tokens[:, :plen], segments[:, :plen], positions[:, :plen], key,
                                 temperature_, top_p_, allowed_V)
        else:
            nxt, cache = prefill(params, cache, tokens[:, t - 1 : t], segments[:, t - 1 : t],
                                 positions[:, t - 1 : t], key, temperature_, top_p_, allowed_V)
        nxt = np.asarray(nxt)
        tokens[:, t] = nxt
        for row in np.flatnonzero(~done):
            if int(nxt[row]) in stop_ids:
                done[row] = True
                continue
            out[row].append(int(nxt[row]))
            if is_done is not None and is_done(out[row]):
                done[row] = True
        if done.all():
            break
    return [np.asarray(x, np.int32) for x in out]


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
    fmt: str | text_format_lib.TextFormat = SENTINEL,
    proxy=None,
    vocab_size: int | None = None,
) -> list[bytes]:
    """Continue each prompt by up to ``max_new_bytes`` ids of text; returns the new bytes of every prompt.

    The model reads the prompt in text format ``fmt`` (``text_format.TextFormat.prompt_ids``) and writes
    the ids that format allows; ``compressed`` needs the run's ``proxy`` (its ``encode`` and ``decode``)
    and the logical ``vocab_size`` (default ``model.args.vocab_size``), and its ids are symbols.
    """
    if not prompts:
        return []
    _check(max_new_bytes, temperature, top_p, rng)
    fmt = text_format_lib.get(fmt)
    if fmt.symbols and proxy is None:
        raise ValueError(f"text format {fmt.name!r} generates the proxy's symbols; pass the run's proxy.")
    encode, decode = (proxy.encode, proxy.decode) if proxy is not None else (None, None)
    args = model.args
    ids = [fmt.prompt_ids(p, encode) for p in prompts]
    allowed_V = fmt.allowed_mask(args.padded_vocab_size, vocab_size or args.vocab_size)
    return generate_text(model, params, ids, lambda new: fmt.decode(new, decode), stop=stop,
                         max_new_ids=max_new_bytes, allowed_V=allowed_V, stop_ids=fmt.stop_ids,
                         temperature=temperature, top_p=top_p, rng=rng, use_cache=use_cache)


def generate_text(model: Transformer, params, prompt_ids: list[np.ndarray], decode, *, stop=(), max_new_ids: int,
                  allowed_V: np.ndarray, stop_ids=SENTINEL.stop_ids, temperature: float = 0.0, top_p: float = 1.0,
                  rng=None, use_cache: bool = True) -> list[bytes]:
    """:func:`generate_ids` read as text: ``decode(ids) -> bytes`` (raw bytes, or a tokenizer's decoder); a row
    also ends once its text holds one of the ``stop`` strings, and is returned cut before it."""
    stop = tuple(bytes(s) for s in stop)
    is_done = (lambda new: first_stop(decode(np.asarray(new)), stop) >= 0) if stop else None
    new_ids = generate_ids(model, params, prompt_ids, max_new_ids=max_new_ids, allowed_V=allowed_V,
                           stop_ids=stop_ids, is_done=is_done, temperature=temperature, top_p=top_p, rng=rng,
                           use_cache=use_cache)
    return [cut_at_stop(decode(new), stop) for new in new_ids]
