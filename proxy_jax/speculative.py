"""Greedy multi-byte decoding: the extra prediction heads draft bytes, one forward pass verifies them.

Output contract: for every prompt, :func:`generate_speculative` returns exactly the bytes that
``generate.generate(..., temperature=0)`` returns in the same byte text format (``sentinel`` or
``plain``: the same prompt prefix, allowed ids and stop ids, from ``proxy_jax.text_format``; same stop
strings, same ``max_new_bytes``), up to floating-point ties between two allowed ids.

One step, per row. The row has a *pending* id ``x`` (decided by head 0, not yet in the KV cache) and
``D`` drafted ids ``d_1..d_D`` for the ids after it. Main head ``h`` at a slot predicts the id
``h + 1`` places ahead and raw head ``j`` the id ``num_pred_heads + j + 1`` places ahead, so the heads
``1..H-1`` and then the raw heads at the last decided slot draft ``D <= H - 1 + R`` ids in a chain.
The step feeds ``[x, d_1, .., d_D]`` (``T = D + 1`` slots) against the cache; head 0's restricted
argmax ``g_k`` at slot ``k`` is what plain greedy would choose after that slot. The row accepts the
longest prefix ``d_1..d_a`` with ``d_k == g_{k-1}`` and one verifier id ``g_a``: it gains ``a + 1``
ids from one pass, all of them the ones plain greedy would have produced. ``g_a`` becomes the new
pending id and the heads at slot ``a`` draft the next chain. The prompt pass (prefill) decides the
first pending id and drafts the first chain.

Cache layout with rows that accept different counts. The model's cache writes every row at one
shared slot index, and attention masks keys by slot order (causal) and by segment id (0 = never
seen). Each row ``r`` keeps its cached ids contiguous in slots ``[.., fill_r)``. A step writes all
rows at the shared index ``i = max_r fill_r`` (rows with ``fill_r < i`` have a hole
``[fill_r, i)`` whose segment ids are 0, so the new queries see exactly the row's own prefix, and
positions come from the row's own count, so RoPE is unaffected). After the pass each row's ``T``
new entries are moved from ``[i, i + T)`` down to ``[fill_r, fill_r + T)``, its fill becomes
``fill_r + a_r + 1``, and every slot at or beyond the new fill gets segment id 0: rejected drafts
are never attended to and are overwritten by the next step. The cache therefore needs only
``prompt + max_new_bytes + T`` slots, as plain decoding needs ``prompt + max_new_bytes``. Rows that
have finished take part with fill 0 (fixed shapes for jit); what they write is never read.

Everything a step computes stays on the device except the accepted counts, the verifier ids and
the next drafts (a few ints per row), which the host reads to apply stop ids and stop strings in
order, exactly as plain greedy does, and to stop early once every row has finished.

``stats`` (a dict): ``forward_passes`` (model calls, prefill included), ``bytes_generated`` (ids
decided over all rows, a stop id included), ``row_passes`` (over rows, the passes each row took part
in while unfinished), ``bytes_per_pass`` (``bytes_generated / row_passes``; 1.0 for plain greedy)
and ``accepted_histogram`` (how many row-steps accepted 0, 1, .., D drafts).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import text_format as text_format_lib
from proxy_jax import vocab
from proxy_jax.generate import cut_at_stop, first_stop
from proxy_jax.model import ModelArgs, Transformer, init_cache


def _masked_argmax(logits_xV, fmt: text_format_lib.TextFormat):
    """Argmax over the ids greedy decoding may choose in byte format ``fmt`` (raw bytes and its stop ids)."""
    size = logits_xV.shape[-1]
    allowed = jnp.asarray(fmt.allowed_mask(size, size))
    return jnp.argmax(jnp.where(allowed, logits_xV, -jnp.inf), axis=-1).astype(jnp.int32)


def _chain(logits_BxHxV, raw_BxRxC, num_draft: int, fmt: text_format_lib.TextFormat):
    """Head 0's choice and the ``num_draft`` drafted ids that follow it, from one slot per row."""
    ids_BxN = _masked_argmax(logits_BxHxV, fmt)
    if raw_BxRxC is not None:
        ids_BxN = jnp.concatenate([ids_BxN, _masked_argmax(raw_BxRxC, fmt)], axis=1)
    return ids_BxN[:, 0], ids_BxN[:, 1 : 1 + num_draft]


def _leaf_name(path) -> str:
    return str(getattr(path[-1], "key", path[-1]))


def _set_cache_index(cache, index):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, index) if _leaf_name(path) == "cache_index" else x, cache
    )


def _compact_rows(cache, index, fill_B, new_fill_B, width: int):
    """Move each row's ``width`` entries written at slot ``index`` to its own ``fill``; hide the rest.

    Cache leaves carry optional leading layer axes, then batch, then slots (``cached_key`` and
    ``cached_value`` end with [.., B, S, kv_heads, head_dim], ``cached_segment_ids`` with [.., B, S]).
    """

    def fix(path, x):
        name = _leaf_name(path)
        if name == "cache_index":
            return x
        batch_axis = x.ndim - (2 if name == "cached_segment_ids" else 4)
        x_B = jnp.moveaxis(x, batch_axis, 0)

        def move(row, fill):
            chunk = jax.lax.dynamic_slice_in_dim(row, index, width, axis=batch_axis)
            return jax.lax.dynamic_update_slice_in_dim(row, chunk, fill, axis=batch_axis)

        x_B = jax.vmap(move)(x_B, fill_B)
        if name == "cached_segment_ids":
            slots = jnp.arange(x_B.shape[-1])
            keep_BxS = slots[None, :] < new_fill_B[:, None]
            x_B = jnp.where(keep_BxS.reshape(keep_BxS.shape[:1] + (1,) * batch_axis + keep_BxS.shape[1:]), x_B, 0)
        return jnp.moveaxis(x_B, 0, batch_axis)

    return jax.tree_util.tree_map_with_path(fix, cache)


@functools.lru_cache(maxsize=16)
def _step_fns(args: ModelArgs, num_draft: int, fmt: text_format_lib.TextFormat):
    model = Transformer(args)

    @jax.jit
    def prefill(params, cache, tokens_BxP, segment_ids_BxP, positions_BxP):
        (logits, raw), mutated = model.apply(
            {"params": params, "cache": cache}, tokens_BxP, segment_ids_BxP, positions_BxP,
            decode=True, mutable=["cache"],
        )
        nxt_B, drafts_BxD = _chain(logits[:, -1], None if raw is None else raw[:, -1], num_draft, fmt)
        return nxt_B, drafts_BxD, mutated["cache"]

    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(params, cache, fed_BxT, position_B, fill_B, active_B):
        width = fed_BxT.shape[1]
        fill_B = jnp.where(active_B, fill_B, 0)
        index = jnp.max(fill_B)
        positions_BxT = position_B[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
        (logits, raw), mutated = model.apply(
            {"params": params, "cache": _set_cache_index(cache, index)}, fed_BxT, jnp.ones_like(fed_BxT),
            positions_BxT, decode=True, mutable=["cache"],
        )
        greedy_BxT = _masked_argmax(logits[:, :, 0], fmt)
        match_BxD = fed_BxT[:, 1:] == greedy_BxT[:, :-1]
        accepted_B = jnp.sum(jnp.cumprod(match_BxD.astype(jnp.int32), axis=1), axis=1)
        at_B = accepted_B[:, None, None, None]
        last_raw = None if raw is None else jnp.take_along_axis(raw, at_B, axis=1)[:, 0]
        verifier_B, drafts_BxD = _chain(jnp.take_along_axis(logits, at_B, axis=1)[:, 0], last_raw, num_draft,
                                        fmt)
        new_fill_B = jnp.where(active_B, fill_B + accepted_B + 1, 0)
        cache = _compact_rows(mutated["cache"], index, fill_B, new_fill_B, width)
        return accepted_B, verifier_B, drafts_BxD, cache, new_fill_B

    return prefill, step


def generate_speculative(
    model_or_args: Transformer | ModelArgs,
    params,
    prompts: list[bytes],
    *,
    max_new_bytes: int,
    stop=(),
    num_draft: int | None = None,
    fmt: str | text_format_lib.TextFormat = text_format_lib.SENTINEL,
) -> tuple[list[bytes], dict]:
    """Greedy continuation of each prompt by up to ``max_new_bytes`` bytes, drafting with the extra heads.

    ``num_draft`` ids are drafted per step (default: every extra head, ``num_pred_heads - 1 +
    num_raw_pred_heads``; 0 decodes one byte per pass). Returns the new bytes of every prompt and
    the stats described in the module docstring. ``fmt`` is a byte text format, as in ``generate.generate``.
    """
    fmt = text_format_lib.get(fmt)
    if fmt.symbols:
        raise ValueError(f"speculative decoding drafts raw bytes; text format {fmt.name!r} writes the proxy's "
                         "symbols, so use proxy_jax.generate.generate.")
    args = model_or_args.args if isinstance(model_or_args, Transformer) else model_or_args
    if not isinstance(args, ModelArgs):
        raise ValueError(f"model_or_args is a {type(model_or_args).__name__}; pass a Transformer or ModelArgs.")
    if args.attention == "eva":
        # Verifying drafts feeds several tokens per pass and rewinds rejected ones; EVA's cache folds
        # every fed token into its chunk summaries and cannot rewind.
        raise ValueError(
            "model.attention='eva' has no speculative decoding (its cache cannot take back rejected drafts); "
            "use proxy_jax.generate.generate."
        )
    most = args.num_pred_heads - 1 + args.num_raw_pred_heads
    num_draft = most if num_draft is None else int(num_draft)
    if not 0 <= num_draft <= most:
        raise ValueError(
            f"num_draft={num_draft} is outside 0..{most}, the extra heads this model has "
            f"(num_pred_heads - 1 + num_raw_pred_heads); pass a value in that range or None."
        )
    if max_new_bytes < 1:
        raise ValueError(f"max_new_bytes={max_new_bytes} must be >= 1.")
    width = num_draft + 1
    stats = dict(forward_passes=0, bytes_generated=0, row_passes=0, bytes_per_pass=0.0,
                 accepted_histogram=[0] * width)
    if not prompts:
        return [], stats
    stop = tuple(bytes(s) for s in stop)

    ids = [fmt.prompt_ids(p) for p in prompts]
    b, plen = len(ids), max(len(x) for x in ids)
    tokens = np.zeros((b, plen), np.int32)
    segments = np.zeros((b, plen), np.int32)
    positions = np.zeros((b, plen), np.int32)
    for row, x in enumerate(ids):
        tokens[row, plen - len(x) :] = x
        segments[row, plen - len(x) :] = 1
        positions[row, plen - len(x) :] = np.arange(len(x))
    # An unfinished row has decided < max_new_bytes ids, so at most max_new_bytes - 2 of them are
    # cached and a step writes below plen + max_new_bytes - 2 + width.
    slots = plen + max_new_bytes + width

    prefill, step = _step_fns(args, num_draft, fmt)
    out = [bytearray() for _ in range(b)]
    decided = np.zeros(b, np.int64)
    done = np.zeros(b, bool)
    hist = np.zeros(width, np.int64)

    def take(row, token):
        decided[row] += 1
        if token in fmt.stop_ids:
            done[row] = True
            return
        out[row].append(int(token) - vocab.BYTE_OFFSET)
        if (stop and first_stop(bytes(out[row]), stop) >= 0) or decided[row] >= max_new_bytes:
            done[row] = True

    cache = init_cache(Transformer(args), b, slots)
    nxt, drafts, cache = prefill(params, cache, tokens, segments, positions)
    nxt, drafts = np.asarray(nxt), np.asarray(drafts)
    stats["forward_passes"], stats["row_passes"] = 1, b
    for row in range(b):
        take(row, nxt[row])
    fill = np.full(b, plen, np.int32)
    position = np.array([len(x) for x in ids], np.int32)  # the pending id's position in its document
    while not done.all():
        active = ~done
        fed = np.concatenate([nxt[:, None], drafts], axis=1).astype(np.int32)
        accepted, nxt, drafts, cache, fill = step(params, cache, fed, position, fill, active)
        accepted, nxt, drafts, fill = (np.asarray(x) for x in (accepted, nxt, drafts, fill))
        stats["forward_passes"] += 1
        stats["row_passes"] += int(active.sum())
        for row in np.flatnonzero(active):
            hist[accepted[row]] += 1
            for token in [*fed[row, 1 : 1 + accepted[row]], nxt[row]]:
                take(row, token)
                if done[row]:
                    break
        position = position + np.where(active, accepted + 1, 0).astype(np.int32)

    results = [cut_at_stop(bytes(text), stop) for text in out]
    stats["bytes_generated"] = int(decided.sum())
    stats["bytes_per_pass"] = stats["bytes_generated"] / stats["row_passes"]
    stats["accepted_histogram"] = hist.tolist()
    return results, stats
