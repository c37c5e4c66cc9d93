"""Deterministic packed batches of real data (the Python standard library's own .py files) for model tests.

Independent of the data pipeline on purpose: the model tests should fail only for model reasons.
Documents are ``1 12 <bytes> 13 2``, concatenated and cut into rows of ``seq_len + num_targets``
tokens; segment ids number documents within a row (a new one at every BOS), positions restart there.
"""

from __future__ import annotations

import numpy as np

from helpers import stdlib_docs
from proxy_jax import vocab




def segments_and_positions(tokens_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (new one at every BOS, 0 on padding) and in-document positions of packed rows."""
    is_bos = tokens_BxT == vocab.BOS
    seg = np.cumsum(is_bos, axis=1) + (~is_bos[:, :1]).astype(np.int64)  # a row may start mid-document
    seg = np.where(tokens_BxT == vocab.PAD, 0, seg).astype(np.int32)
    pos = np.zeros_like(tokens_BxT, dtype=np.int32)
    for b in range(tokens_BxT.shape[0]):
        p = 0
        for t in range(tokens_BxT.shape[1]):
            if is_bos[b, t]:
                p = 0
            pos[b, t] = p
            p += 1
    return seg, pos


def packed_batches(num_batches: int, batch_size: int, seq_len: int, num_targets: int = 1, *, offset: int = 0,
                   comp_every: int = 0):
    """``num_batches`` dicts of int32 numpy arrays [batch_size, seq_len + num_targets].

    With ``comp_every`` > 0 every such document is written as a fake compressed view (its bytes + 320,
    i.e. symbols of a 256-symbol proxy, between 14 and 15) so the compressed loss path is exercised.
    """
    stream = []
    for i, doc in enumerate(stdlib_docs()):
        ids = vocab.encode_raw(doc)
        if comp_every and i % comp_every == 0:
            stream.append(np.concatenate([[vocab.BOS, vocab.COMP_OPEN], ids - 64 + 320, [vocab.COMP_CLOSE, vocab.EOS]]))
        else:
            stream.append(np.concatenate([[vocab.BOS, vocab.RAW_OPEN], ids, [vocab.RAW_CLOSE, vocab.EOS]]))
    stream = np.concatenate(stream).astype(np.int32)
    row = seq_len + num_targets
    stride = seq_len  # consecutive rows overlap by num_targets so that no target is lost
    out = []
    for n in range(num_batches):
        rows = []
        for b in range(batch_size):
            start = ((offset + n * batch_size + b) * 7919 * stride) % (len(stream) - row)
            rows.append(stream[start : start + row])
        tokens = np.stack(rows)
        seg, pos = segments_and_positions(tokens)
        out.append({"tokens": tokens, "segment_ids": seg, "positions": pos,
                    "step": np.full((batch_size,), n, np.int32)})
    return out
