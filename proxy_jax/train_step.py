"""Pure, jitted training and evaluation steps, and the loss they share.

Batch layout (from the data pipeline): ``tokens``, ``segment_ids``, ``positions`` int32 [B, L+K] with
K = num_pred_heads + num_raw_pred_heads; other keys are ignored. Inputs are the first L columns.

The loss, exactly:

* Main head h (0 <= h < H) at position t predicts ``tokens[t+1+h]`` over the true vocabulary: logits
  of padded embedding rows (ids >= ``vocab_size``) are set to the float32 minimum before the softmax,
  so they take no probability mass and are never targets. The head is *active* at t when its target
  is not pad (id 0) and the input at t is not padding (segment id 0).
* Raw head j (0 <= j < R) at position t predicts ``tokens[t+1+H+j]`` over 320 classes (ids 0..319,
  i.e. specials and bytes). It is active at t only when every target ``tokens[t+1] .. tokens[t+1+H+j]``
  is a raw byte (64..319) and the input at t is not padding.
* The loss at a position is the mean cross-entropy over the heads active there; the batch loss is
  the mean over positions with at least one active head. With one head this is plain token-level
  cross-entropy over every non-pad target (sentinels, BOS and EOS included), as in the paper.

With ``config.model.loss_chunk`` = c > 0 the heads and these terms are computed c positions at a time
(:func:`chunked_loss_terms`), so B x L x V logits never exist at once; the result is the same.

Metrics: ``loss`` (above), ``raw_loss`` / ``comp_loss`` (main head 0 only, averaged over its raw-byte
/ compressed targets), ``grad_norm`` (before clipping), ``lr`` (of the step being taken), and the
counts ``tokens`` (head-0 targets), ``raw_targets``, ``comp_targets``.

Gradient accumulation (``config.opt.grad_accum_steps`` = k > 1): the global batch is split into k
micro-batches (micro-batch i = rows i, i+k, i+2k, ..., so each device keeps its own rows) that are
scanned in sequence; summed losses and gradients are divided by the total number of active positions,
so the update equals the one from the whole batch at once.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from proxy_jax import model as model_lib
from proxy_jax import optimizer as optimizer_lib
from proxy_jax import sharding as sharding_lib
from proxy_jax import vocab

MODEL_KEYS = ("tokens", "segment_ids", "positions")


def _cross_entropy(logits_NxV, targets_N):
    logz = jax.nn.logsumexp(logits_NxV, axis=-1)
    picked = jnp.take_along_axis(logits_NxV, targets_N[..., None], axis=-1)[..., 0]
    return logz - picked


def loss_terms(logits_BxLxHxV, raw_logits_BxLxRxC, tokens_BxT, segment_ids_BxT, vocab_size: int) -> dict:
    """Summed losses and counts of one batch (sums, so micro-batches can be added up)."""
    _, l, h, v = logits_BxLxHxV.shape
    r = 0 if raw_logits_BxLxRxC is None else raw_logits_BxLxRxC.shape[2]
    targets_BxLxK = jnp.stack([tokens_BxT[:, 1 + k : 1 + k + l] for k in range(h + r)], axis=2)
    input_real_BxL = segment_ids_BxT[:, :l] != 0

    logits = logits_BxLxHxV.astype(jnp.float32)
    logits = jnp.where(jnp.arange(v) < vocab_size, logits, jnp.finfo(jnp.float32).min)
    main_targets_BxLxH = targets_BxLxK[:, :, :h]
    main_active_BxLxH = (
        (main_targets_BxLxH != vocab.PAD) & (main_targets_BxLxH < vocab_size) & input_real_BxL[..., None]
    )
    main_ce_BxLxH = _cross_entropy(logits, jnp.where(main_active_BxLxH, main_targets_BxLxH, 0))
    ce_BxLxK, active_BxLxK = main_ce_BxLxH, main_active_BxLxH
    if r:
        all_raw_BxLxK = jnp.cumprod(vocab.is_raw_byte(targets_BxLxK).astype(jnp.int32), axis=2) == 1
        raw_active_BxLxR = all_raw_BxLxK[:, :, h:] & input_real_BxL[..., None]
        raw_ce_BxLxR = _cross_entropy(
            raw_logits_BxLxRxC.astype(jnp.float32), jnp.where(raw_active_BxLxR, targets_BxLxK[:, :, h:], 0)
        )
        ce_BxLxK = jnp.concatenate([main_ce_BxLxH, raw_ce_BxLxR], axis=2)
        active_BxLxK = jnp.concatenate([main_active_BxLxH, raw_active_BxLxR], axis=2)

    n_active_BxL = active_BxLxK.sum(axis=2)
    per_position_BxL = jnp.where(active_BxLxK, ce_BxLxK, 0.0).sum(axis=2) / jnp.maximum(n_active_BxL, 1)
    head0_ce, head0_active, head0_target = main_ce_BxLxH[..., 0], main_active_BxLxH[..., 0], main_targets_BxLxH[..., 0]
    raw_mask = head0_active & vocab.is_raw_byte(head0_target)
    comp_mask = head0_active & vocab.is_comp(head0_target)
    return {
        "loss_sum": per_position_BxL.sum(),
        "positions": (n_active_BxL > 0).sum(),
        "raw_nll_sum": jnp.where(raw_mask, head0_ce, 0.0).sum(),
        "raw_targets": raw_mask.sum(),
        "comp_nll_sum": jnp.where(comp_mask, head0_ce, 0.0).sum(),
        "comp_targets": comp_mask.sum(),
        "tokens": head0_active.sum(),
    }


def chunked_loss_terms(x_BxLxD, w_DxHxV, w_DxRxC, tokens_BxT, segment_ids_BxT, vocab_size: int, chunk: int,
                       dtype) -> dict:
    """:func:`loss_terms` of ``head_logits(x, ...)`` computed ``chunk`` positions at a time.

    A ``lax.scan`` over chunks of positions runs the head matmul, log-softmax and target gather of one
    chunk inside ``jax.checkpoint``, so neither pass holds more than [B, chunk, H, V] logits (the
    backward pass recomputes each chunk's logits). Positions past L (when ``chunk`` does not divide L)
    are padded with pad targets and padding inputs, which take part in no term.
    """
    b, l, d = x_BxLxD.shape
    k = tokens_BxT.shape[1] - l
    n = -(-l // chunk)
    pad = n * chunk - l
    x_NxBxCxD = jnp.pad(x_BxLxD, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
    tokens = jnp.pad(tokens_BxT, ((0, 0), (0, pad)))
    # Only inputs' segment ids matter; zeros from L on keep padded positions out of every term.
    segments = jnp.pad(segment_ids_BxT[:, :l], ((0, 0), (0, pad + k)))

    @jax.checkpoint
    def chunk_terms(x_BxCxD, w_head, w_raw, tokens_BxCK, segments_BxCK):
        logits, raw_logits = model_lib.head_logits(x_BxCxD, w_head, w_raw, dtype)
        return loss_terms(logits, raw_logits, tokens_BxCK, segments_BxCK, vocab_size)

    def body(carry, inputs):
        x_BxCxD, start = inputs
        window = lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk + k, axis=1)  # noqa: E731
        terms = chunk_terms(x_BxCxD, w_DxHxV, w_DxRxC, window(tokens), window(segments))
        return jax.tree.map(jnp.add, carry, terms), None

    zeros = jax.tree.map(
        lambda t: jnp.zeros(t.shape, t.dtype),
        jax.eval_shape(chunk_terms, x_NxBxCxD[0], w_DxHxV, w_DxRxC, tokens[:, : chunk + k], segments[:, : chunk + k]),
    )
    terms, _ = jax.lax.scan(body, zeros, (x_NxBxCxD, jnp.arange(n, dtype=jnp.int32) * chunk))
    return terms


def _split_inputs(batch, num_targets: int):
    length = batch["tokens"].shape[1] - num_targets
    return (
        batch["tokens"][:, :length],
        batch["segment_ids"][:, :length],
        batch["positions"][:, :length],
    )


def make_loss_fn(model, vocab_size: int, loss_chunk: int = 0):
    """``loss_fn(params, batch) -> (loss_sum, terms)`` with the terms of :func:`loss_terms`; rows carry the
    model's K = ``args.num_targets`` columns past the inputs.

    ``loss_chunk`` > 0 (``config.model.loss_chunk``) computes the heads and the loss that many positions
    at a time (:func:`chunked_loss_terms`); the terms are the same up to float rounding.
    """
    num_targets = model.args.num_targets

    def loss_fn(params, batch):
        tokens_BxL, segment_ids_BxL, positions_BxL = _split_inputs(batch, num_targets)
        if loss_chunk > 0:
            x, w_head, w_raw = model.apply(
                {"params": params}, tokens_BxL, segment_ids_BxL, positions_BxL, heads=False
            )
            terms = chunked_loss_terms(x, w_head, w_raw, batch["tokens"], batch["segment_ids"], vocab_size,
                                       loss_chunk, jnp.dtype(model.args.dtype))
            return terms["loss_sum"], terms
        logits, raw_logits = model.apply({"params": params}, tokens_BxL, segment_ids_BxL, positions_BxL)
        terms = loss_terms(logits, raw_logits, batch["tokens"], batch["segment_ids"], vocab_size)
        return terms["loss_sum"], terms

    return loss_fn


def _metrics_from_terms(terms):
    def ratio(num, den):
        return num / jnp.maximum(den, 1).astype(jnp.float32)

    return {
        "loss": ratio(terms["loss_sum"], terms["positions"]),
        "raw_loss": ratio(terms["raw_nll_sum"], terms["raw_targets"]),
        "comp_loss": ratio(terms["comp_nll_sum"], terms["comp_targets"]),
        "tokens": terms["tokens"],
        "raw_targets": terms["raw_targets"],
        "comp_targets": terms["comp_targets"],
    }


def make_train_step(
    config: ml_collections.ConfigDict,
    model,
    tx,
    mesh,
    state_shardings,
    vocab_size: int,
    lr_schedule=None,
):
    """Jitted ``step_fn(state, batch) -> (state, metrics)``; the state argument is donated.

    ``batch`` holds global jax.Arrays (see ``sharding.host_to_global``) or, on one process, numpy
    arrays; keys other than tokens/segment_ids/positions are ignored. ``lr_schedule`` defaults to
    the schedule of ``config.opt`` over ``config.train.steps``.
    """
    if lr_schedule is None:
        lr_schedule = optimizer_lib.make_schedule(config.opt, int(config.train.steps))
    accum = int(config.opt.grad_accum_steps)
    loss_fn = make_loss_fn(model, vocab_size, int(config.model.loss_chunk))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    rules = sharding_lib.logical_rules(config)

    def micro_step(params, batch):
        (_, terms), grads = grad_fn(params, batch)
        return grads, terms

    def train_step(state, batch):
        if accum == 1:
            # The backward pass starts from d(loss)/d(loss_sum) = 1/positions instead of 1, so the mean's
            # gradient comes out of it directly: no extra pass over every gradient to divide it afterwards.
            _, vjp_fn, terms = jax.vjp(lambda p: loss_fn(p, batch), state.params, has_aux=True)
            (grads,) = vjp_fn(1.0 / jnp.maximum(terms["positions"], 1).astype(jnp.float32))
        else:
            # Rows i, i+k, ... form micro-batch i, so every device keeps working on its own rows.
            micro = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch
            )

            def body(carry, mb):
                grads, terms = micro_step(state.params, mb)
                return jax.tree.map(jnp.add, carry, (grads, terms)), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro_step, state.params, first))
            (grads, terms), _ = jax.lax.scan(body, zeros, micro)
            grads = jax.tree.map(lambda g: g / jnp.maximum(terms["positions"], 1).astype(g.dtype), grads)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = _metrics_from_terms(terms)
        metrics["grad_norm"] = grad_norm
        metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
        out_shardings=(state_shardings, NamedSharding(mesh, P())),
        donate_argnums=0,
    )

    def step_fn(state, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(state, {k: batch[k] for k in MODEL_KEYS})

    step_fn.jitted = jitted
    return step_fn


def make_eval_step(config: ml_collections.ConfigDict, model, mesh, state_shardings=None, vocab_size=None, *,
                   param_shardings=None):
    """Jitted ``fn(params, batch) -> dict`` of summed negative log-likelihoods for bits-per-byte.

    Only main head 0 is used. Every row is read as one window: inputs ``tokens[:, :-1]``, targets
    ``tokens[:, 1:]`` (so a window of W predictions needs rows of W + 1 tokens); pad targets and
    padding inputs are skipped. Returns ``sum_nll_raw`` (nats over raw-byte targets 64..319),
    ``raw_count``, the same over compressed-symbol targets (>= 320) as ``sum_nll_comp`` /
    ``comp_count``, and over all targets as ``sum_nll`` / ``count``. Parameters are laid out as
    ``state_shardings.params`` (training) or ``param_shardings`` (a restored run). ``vocab_size``: the
    logical vocabulary (default ``model.args.vocab_size``); the padded rows above it are never scored.
    """
    vocab_size = int(vocab_size or model.args.vocab_size)
    rules = sharding_lib.logical_rules(config)

    def eval_step(params, batch):
        tokens_BxT, segment_ids_BxT = batch["tokens"], batch["segment_ids"]
        logits, _ = model.apply(
            {"params": params}, tokens_BxT[:, :-1], segment_ids_BxT[:, :-1], batch["positions"][:, :-1]
        )
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits[:, :, 0], jnp.finfo(jnp.float32).min)
        targets_BxL = tokens_BxT[:, 1:]
        active = (targets_BxL != vocab.PAD) & (targets_BxL < vocab_size) & (segment_ids_BxT[:, :-1] != 0)
        nll_BxL = _cross_entropy(logits, jnp.where(active, targets_BxL, 0))
        raw = active & vocab.is_raw_byte(targets_BxL)
        comp = active & vocab.is_comp(targets_BxL)
        return {
            "sum_nll_raw": jnp.where(raw, nll_BxL, 0.0).sum(),
            "raw_count": raw.sum(),
            "sum_nll_comp": jnp.where(comp, nll_BxL, 0.0).sum(),
            "comp_count": comp.sum(),
            "sum_nll": jnp.where(active, nll_BxL, 0.0).sum(),
            "count": active.sum(),
        }

    params_sharding = param_shardings if state_shardings is None else state_shardings.params
    jitted = jax.jit(
        eval_step,
        in_shardings=(params_sharding, sharding_lib.batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, P()),
    )

    def eval_fn(params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(params, {k: batch[k] for k in MODEL_KEYS})

    eval_fn.jitted = jitted
    return eval_fn
