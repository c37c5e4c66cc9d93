"""M1, the small byte LM of the neural proxy: loading it and running it in fixed-shape batches.

M1 is any byte-only run of this library (``configs/m1.py``). For coding it runs in float32 with XLA
attention, whatever it was trained with. Causal masking makes a row's outputs depend only on its own
earlier bytes in exact arithmetic, but the float rounding of a matrix product depends on the shape of
the whole call (measured on CPU: the same row gives different last bits in a batch of 8 rows and in one
of 16). So M1 always runs on *tiles* of one fixed shape per bucket length ``L`` (lengths 8, 12, 16, 24,
32, 48, ...: powers of two and 1.5x powers of two, so padding stays under 1.5x): ``tile_rows(L) =
max(1, tile_positions // L)`` rows of ``L`` bytes. A call holds several tiles and runs them one after
another (``lax.map``), so a row's tables depend only on its own bytes, its bucket and ``tile_positions``
(part of the view's definition, recorded in the manifest), never on what else is in the call, on how
many tiles a call holds, or on which process runs it.

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

MIN_BUCKET = 8
BUCKET_RULE = "pow2-and-1.5x-pow2-from-8"
DEFAULT_TILE_POSITIONS = 2048


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
    """Smallest of 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5x powers of two) >= n, capped at
    ``max_len``."""
    length = MIN_BUCKET
    while length < n:
        length = length * 3 // 2 if length & (length - 1) == 0 else length // 3 * 4
    return min(length, max_len) if n <= max_len else n


def tile_rows(length: int, tile_positions: int) -> int:
    """Rows of one M1 tile for bucket ``length``: as many as fit ``tile_positions`` bytes, at least 1."""
    return max(1, int(tile_positions) // int(length))


def check_tile_positions(tile_positions: int) -> int:
    tile_positions = int(tile_positions)
    if tile_positions < MIN_BUCKET:
        raise ValueError(f"proxy.m1_tile_positions={tile_positions} is too small; use at least {MIN_BUCKET} "
                         f"(default {DEFAULT_TILE_POSITIONS}; larger on an accelerator).")
    return tile_positions


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


def byte_logits(args: ModelArgs, params, tokens_BxL):
    """M1's float32 logits of the 256 byte ids ``[B, L, 256]`` (traced inside the jitted callers)."""
    ones_BxL = jnp.ones_like(tokens_BxL)
    positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
    logits_BxLxHxV, _ = Transformer(args).apply({"params": params}, tokens_BxL, ones_BxL, positions_BxL)
    return logits_BxLxHxV[:, :, 0, vocab.BYTE_OFFSET : vocab.COMP_OFFSET].astype(jnp.float32)


def entropy_bits(logits_BxLx256):
    logp = jax.nn.log_softmax(logits_BxLx256, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1) / jnp.log(2.0)


@functools.partial(jax.jit, static_argnames=("args", "precision"))
def tables(args: ModelArgs, params, tokens_BxL, *, precision: int):
    """Quantised next-byte tables ``uint32[B, L, 256]`` and entropies in bits ``float32[B, L]`` of one
    call of any shape (analysis and tests; the proxy itself uses the tiled functions below)."""
    logits_BxLx256 = byte_logits(args, params, tokens_BxL)
    return quantize.quantize_jnp(logits_BxLx256, precision), entropy_bits(logits_BxLx256)


@functools.partial(jax.jit, static_argnames=("args", "precision"))
def tile_tables(args: ModelArgs, params, tokens_NxBxL, *, precision: int):
    """Quantised tables ``uint32[N, B, L, 256]`` of ``N`` tiles, one tile after another."""
    return jax.lax.map(lambda t: quantize.quantize_jnp(byte_logits(args, params, t), precision), tokens_NxBxL)


@functools.partial(jax.jit, static_argnames=("args",))
def tile_entropies(args: ModelArgs, params, tokens_NxBxL):
    """Entropies in bits ``float32[N, B, L]`` of ``N`` tiles (no quantised tables: the entropy pass)."""
    return jax.lax.map(lambda t: entropy_bits(byte_logits(args, params, t)), tokens_NxBxL)


def groups_by_bucket(rows: list[bytes], max_len: int) -> dict[int, list[int]]:
    """Row indices by bucket length (ascending); rows longer than ``max_len`` are an error."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if len(r) > max_len:
            raise ValueError(f"A segment of {len(r)} bytes is longer than the M1 window of {max_len} bytes.")
        groups.setdefault(bucket_length(len(r), max_len), []).append(i)
    return dict(sorted(groups.items()))


def batches(rows: list[bytes], batch_rows: int, max_len: int):
    """Group rows by bucket length and cut each group into batches of exactly ``batch_rows`` rows.

    Yields ``(row_indices, length, tokens_BxL, bytes_BxL)``; short batches are filled with empty rows.
    For analysis with :func:`tables`; the proxy runs :func:`tiled_batches`.
    """
    for length, idx in groups_by_bucket(rows, max_len).items():
        for s in range(0, len(idx), batch_rows):
            part = idx[s : s + batch_rows]
            chunk = [rows[i] for i in part] + [b""] * (batch_rows - len(part))
            yield part, length, rows_to_tokens(chunk, length), rows_to_bytes(chunk, length)


def tiled_batches(rows: list[bytes], tile_positions: int, max_len: int, tiles_per_call: int):
    """Rows in calls of whole tiles: yields ``(row_indices, length, tokens_NxBxL, bytes_NxBxL, lengths_NxB)``.

    Each bucket's rows fill ``tile_rows(length)``-row tiles in order (the last one padded with empty
    rows); a call holds a power of two of them, at most ``tiles_per_call`` (so a bucket needs at most
    ``log2(tiles_per_call) + 1`` compiled shapes and no call is padded with empty tiles).
    """
    for length, idx in groups_by_bucket(rows, max_len).items():
        per_tile = tile_rows(length, tile_positions)
        tiles = -(-len(idx) // per_tile)
        done = 0
        while done < tiles:
            n = 1
            while n * 2 <= min(tiles - done, tiles_per_call):
                n *= 2
            part = idx[done * per_tile : (done + n) * per_tile]
            chunk = [rows[i] for i in part] + [b""] * (n * per_tile - len(part))
            shape = (n, per_tile, length)
            lengths = np.asarray([len(r) for r in chunk], np.int32).reshape(n, per_tile)
            yield (part, length, rows_to_tokens(chunk, length).reshape(shape),
                   rows_to_bytes(chunk, length).reshape(shape), lengths)
            done += n
