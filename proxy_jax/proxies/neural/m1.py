"""M1, the small byte LM of the neural proxy: loading it and running it in fixed-shape batches.

M1 is any byte-only run of this library (``configs/m1.py``). For coding it runs in float32 with XLA
attention, whatever it was trained with, and always on arrays of the same shapes (``batch_rows`` rows
of a power-of-two bucket length): causal masking makes a row's outputs depend only on its own earlier
bytes, and fixed shapes keep the compiled program (hence the float results) the same between the
encoder, which batches many segments, and the decoder, which grows one prefix at a time.

A row for bytes ``b_0 .. b_{n-1}`` is ``BOS b_0 .. b_{n-2}`` (then padding): position ``t`` predicts ``b_t``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import vocab
from proxy_jax.model import ModelArgs, Transformer
from proxy_jax.proxies.neural import quantize

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class M1:
    """A loaded M1: static args (float32, XLA attention), host parameters and their content hash."""

    args: ModelArgs
    params: Any
    params_hash: str
    context: int  # the sequence length it was trained on

    @classmethod
    def from_params(cls, args: ModelArgs, params: Any, context: int = 2048) -> "M1":
        if args.vocab_size < vocab.RAW_VOCAB_SIZE:
            raise ValueError(f"M1 vocab_size {args.vocab_size} cannot hold the 256 byte ids; train it on bytes.")
        args = dataclasses.replace(args, dtype="float32", attention="xla", remat_policy="none")
        params = jax.device_get(params)
        return cls(args, params, params_hash(params), int(context))


def params_hash(params: Any) -> str:
    """sha256 over every parameter's path, dtype, shape and bytes (independent of the device layout)."""
    h = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def bucket_length(n: int, max_len: int) -> int:
    """Smallest power of two >= n (at least MIN_BUCKET), capped at ``max_len``."""
    length = MIN_BUCKET
    while length < n:
        length *= 2
    return min(length, max_len) if n <= max_len else n


def rows_to_tokens(rows: list[bytes], length: int) -> np.ndarray:
    """Byte strings -> int32 ``[len(rows), length]`` M1 inputs ``BOS b_0 .. b_{n-2}``, padded with 0."""
    out = np.zeros((len(rows), length), np.int32)
    out[:, 0] = vocab.BOS
    for i, r in enumerate(rows):
        n = min(len(r), length)
        if n > 1:
            out[i, 1:n] = np.frombuffer(r[: n - 1], np.uint8).astype(np.int32) + vocab.BYTE_OFFSET
    return out


def rows_to_bytes(rows: list[bytes], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.frombuffer(r[:length], np.uint8)
    return out


@functools.partial(jax.jit, static_argnames=("args", "precision"))
def tables(args: ModelArgs, params, tokens_BxL, *, precision: int):
    """Quantised next-byte tables ``uint32[B, L, 256]`` and entropies in bits ``float32[B, L]``."""
    ones_BxL = jnp.ones_like(tokens_BxL)
    positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
    logits_BxLxHxV, _ = Transformer(args).apply({"params": params}, tokens_BxL, ones_BxL, positions_BxL)
    logits_BxLx256 = logits_BxLxHxV[:, :, 0, vocab.BYTE_OFFSET : vocab.COMP_OFFSET].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits_BxLx256, axis=-1)
    entropy_BxL = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / jnp.log(2.0)
    return quantize.quantize_jnp(logits_BxLx256, precision), entropy_BxL


def batches(rows: list[bytes], batch_rows: int, max_len: int):
    """Group rows by bucket length and cut each group into batches of exactly ``batch_rows`` rows.

    Yields ``(row_indices, length, tokens_BxL, bytes_BxL)``; short batches are filled with empty rows so
    every call has one of a few fixed shapes. Rows longer than ``max_len`` are an error.
    """
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if len(r) > max_len:
            raise ValueError(f"A segment of {len(r)} bytes is longer than the M1 window of {max_len} bytes.")
        groups.setdefault(bucket_length(len(r), max_len), []).append(i)
    for length in sorted(groups):
        idx = groups[length]
        for s in range(0, len(idx), batch_rows):
            part = idx[s : s + batch_rows]
            chunk = [rows[i] for i in part] + [b""] * (batch_rows - len(part))
            yield part, length, rows_to_tokens(chunk, length), rows_to_bytes(chunk, length)
