"""How a run writes a document (its text format): the one place that decides it.

A run reads and writes text in the format it was trained on. There are three, named the same everywhere
(in the run record ``run.json``, field ``text_format``; in evaluation and generation results):

| format         | a document          | prompt prefix | generation may write               | stop ids  |
|----------------|---------------------|---------------|------------------------------------|-----------|
| ``sentinel``   | ``1 12 bytes 13 2`` | ``1 12``      | raw bytes 64..319 and its stop ids | ``2 13``  |
| ``plain``      | ``1 bytes 2``       | ``1``         | raw bytes 64..319 and EOS          | ``2``     |
| ``compressed`` | ``1 symbols 2``     | ``1``         | symbols 320..vocab_size-1 and EOS  | ``2``     |

``sentinel`` is every run whose mix uses sentinels (every proxy run, and its raw-only control); ``plain``
the byte baseline (mix modes all ``vanilla``, rate < 1); ``compressed`` the tokenizer baseline (modes all
``vanilla``, rate 1: it never sees a raw byte). :func:`of_mix` is the only derivation of a run's format
from its config. Bits per byte score the ids that carry the text (:meth:`TextFormat.scored`): raw bytes,
or for ``compressed`` its symbols. ``compressed`` needs the run's proxy to turn bytes into symbols
(``encode``) and back (``decode``); the byte formats need nothing.

Training documents are written here too (:func:`write_document`, used by ``proxy_jax.data.mixing``): a
document is BOS, its streams, EOS; with sentinels each raw stream is wrapped in ``12 .. 13`` and each
compressed stream in ``14 .. 15`` (a translation pair is one document with two streams), without them a
document holds one bare stream.

The oracle-translation probe (``sentinel`` runs with a compressed view) prompts ``1 12 x 13 14`` and lets
the model write raw bytes (the neural proxy's passthrough) or symbols below the logical vocabulary, until
``</comp>`` (15) or EOS: :func:`translation_prompt_ids`, :func:`translation_allowed_mask`,
:data:`TRANSLATION_STOP_IDS`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from proxy_jax import vocab

RAW, COMP = "raw", "comp"  # the two kinds of stream a training document carries

_I = vocab.ID_DTYPE
_BOS = np.array([vocab.BOS], _I)
_EOS = np.array([vocab.EOS], _I)
_OPEN = {RAW: np.array([vocab.RAW_OPEN], _I), COMP: np.array([vocab.COMP_OPEN], _I)}
_CLOSE = {RAW: np.array([vocab.RAW_CLOSE], _I), COMP: np.array([vocab.COMP_CLOSE], _I)}


def write_document(streams: Sequence[tuple[str, np.ndarray]], *, sentinels: bool) -> np.ndarray:
    """``BOS streams EOS`` (int32); ``streams`` are ``(RAW | COMP, ids)``; with ``sentinels`` each is wrapped
    in its opening and closing sentinel. Without sentinels a document holds exactly one stream."""
    if not sentinels and len(streams) != 1:
        raise ValueError(f"a document without sentinels holds one stream, got {len(streams)}; pairs need sentinels.")
    parts = [_BOS]
    for kind, ids in streams:
        if sentinels:
            parts += [_OPEN[kind], ids, _CLOSE[kind]]
        else:
            parts.append(ids)
    parts.append(_EOS)
    return np.concatenate(parts).astype(_I, copy=False)


Encode = Callable[[bytes], np.ndarray]
Decode = Callable[[np.ndarray], bytes]


@dataclasses.dataclass(frozen=True)
class TextFormat:
    """One text format (see the module table). Hashable: it may key jit caches."""

    name: str
    sentinels: bool  # raw text sits between <raw> and </raw>
    symbols: bool  # the text is the proxy's symbols, not raw bytes
    stop_ids: tuple[int, ...]  # ids that end a generation (never part of the returned text)

    @property
    def prefix(self) -> tuple[int, ...]:
        """The ids before the text of a prompt: how every document of this format starts."""
        return (vocab.BOS, vocab.RAW_OPEN) if self.sentinels else (vocab.BOS,)

    def _body(self, text: bytes, encode: Encode | None) -> np.ndarray:
        if not self.symbols:
            return vocab.encode_raw(text)
        if encode is None:
            raise ValueError(f"text format {self.name!r} needs the run's proxy encode function.")
        body = np.asarray(encode(text), _I)
        if body.size and int(body.min()) < vocab.COMP_OFFSET:
            raise ValueError(f"encode gave id {int(body.min())} < {vocab.COMP_OFFSET}: not a compressed symbol id.")
        return body

    def document_ids(self, doc: bytes, encode: Encode | None = None) -> np.ndarray:
        """One whole document as the run was trained to read it (``encode``: the proxy's, for ``compressed``)."""
        return write_document([(COMP if self.symbols else RAW, self._body(doc, encode))], sentinels=self.sentinels)

    def prompt_ids(self, prompt: bytes, encode: Encode | None = None) -> np.ndarray:
        """``prefix + text``: a document's opening, for the model to continue (int32)."""
        return np.concatenate([np.asarray(self.prefix, _I), self._body(prompt, encode)]).astype(_I, copy=False)

    def scored(self, ids):
        """Mask of the ids that carry the text (bits per byte count exactly these as targets)."""
        return vocab.is_comp(ids) if self.symbols else vocab.is_raw_byte(ids)

    def allowed_mask(self, padded_vocab_size: int, vocab_size: int) -> np.ndarray:
        """Bool [padded_vocab_size]: the ids generation may choose: the text ids this format writes (symbols
        only below the logical ``vocab_size``: padded rows are never targets) and its stop ids."""
        ids = np.arange(padded_vocab_size)
        allowed = (ids >= vocab.COMP_OFFSET) & (ids < vocab_size) if self.symbols else vocab.is_raw_byte(ids)
        allowed[[i for i in self.stop_ids if i < padded_vocab_size]] = True
        return allowed

    def decode(self, ids, decode: Decode | None = None) -> bytes:
        """Generated text ids (stop ids already removed) -> bytes (``decode``: the proxy's, for ``compressed``)."""
        if not self.symbols:
            return vocab.decode_raw(ids)
        if decode is None:
            raise ValueError(f"text format {self.name!r} needs the run's proxy decode function.")
        return decode(np.asarray(ids))


SENTINEL = TextFormat("sentinel", sentinels=True, symbols=False, stop_ids=(vocab.EOS, vocab.RAW_CLOSE))
PLAIN = TextFormat("plain", sentinels=False, symbols=False, stop_ids=(vocab.EOS,))
COMPRESSED = TextFormat("compressed", sentinels=False, symbols=True, stop_ids=(vocab.EOS,))
FORMATS = {f.name: f for f in (SENTINEL, PLAIN, COMPRESSED)}
NAMES = tuple(FORMATS)


def get(fmt: str | TextFormat) -> TextFormat:
    """The format named ``fmt`` (a :class:`TextFormat` passes through); one sentence for an unknown name."""
    if isinstance(fmt, TextFormat):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"text format {fmt!r} is not one of {', '.join(map(repr, NAMES))}.")
    return FORMATS[fmt]


def of_mix(mix) -> TextFormat:
    """The format of a run trained on ``config.mix`` (the one place it is derived from a config):
    ``plain``/``compressed`` when every mode is ``vanilla`` (by the final rate), else ``sentinel``."""
    if {mix.mode_warmup, mix.mode_steady, mix.mode_final} != {"vanilla"}:
        return SENTINEL
    return COMPRESSED if float(mix.rate_final) >= 1.0 else PLAIN


# ---- the oracle-translation probe (sentinel runs) ------------------------------------------------------

TRANSLATION_STOP_IDS = (vocab.COMP_CLOSE, vocab.EOS)


def translation_prompt_ids(snippet: bytes) -> np.ndarray:
    """``1 12 x 13 14``: a snippet as raw text, then the opening of its compressed view."""
    opened = write_document([(RAW, vocab.encode_raw(snippet))], sentinels=True)[:-1]
    return np.concatenate([opened, _OPEN[COMP]])


def translation_allowed_mask(padded_vocab_size: int, vocab_size: int) -> np.ndarray:
    """Ids a translation may contain: raw bytes (neural passthrough), compressed symbols below the logical
    ``vocab_size`` (the padded rows are never targets), and the two stop ids."""
    ids = np.arange(padded_vocab_size)
    allowed = (ids >= vocab.BYTE_OFFSET) & (ids < vocab_size)
    allowed[list(TRANSLATION_STOP_IDS)] = True
    return allowed
