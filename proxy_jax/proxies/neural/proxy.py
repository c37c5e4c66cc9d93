"""``NeuralProxy``: entropy segmentation + M1 + equal-information-window arithmetic coding.

``encode_batch`` codes many documents with a handful of jitted calls: an entropy pass (M1 over all
chunks, entropies only), then one fused call per group of tiles that runs M1, quantises, looks up each
byte's interval and runs the coder, returning only ids (segments are grouped by length buckets 8, 12,
16, 24, 32, ..., so padding stays under 1.5x). Every M1 call is made of fixed tiles
(:mod:`~proxy_jax.proxies.neural.m1`), so a document's ids depend only on its own bytes and the
proxy's settings: not on the documents it is batched with, the batch size or the process that codes
it. All calls are dispatched before the first result is read. Ids: window symbol ``s`` -> ``320 + s``,
passthrough byte ``b`` -> ``64 + b``. The view is not self-delimiting; ``encode_detailed`` also returns
how many bytes each id covers and where segments end, which is what :meth:`NeuralProxy.decode` needs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import vocab
from proxy_jax.proxies.base import Inputs, Proxy, register
from proxy_jax.proxies.neural import coder, quantize, reference, segment
from proxy_jax.proxies.neural import m1 as m1_lib


@dataclasses.dataclass
class NeuralCode:
    """One document's view plus what the decoder needs to invert it."""

    ids: np.ndarray  # int32 ids of the view
    nbytes: np.ndarray  # int32 bytes covered by each id
    segment_ids: np.ndarray  # int32 number of ids in each segment

    @property
    def segment_bytes(self) -> list[int]:
        ends = np.cumsum(self.segment_ids)
        starts = ends - self.segment_ids
        return [int(self.nbytes[s:e].sum()) for s, e in zip(starts, ends)]


@functools.partial(jax.jit, static_argnames=("args", "window_bits", "precision"))
def _code_tiles(args, params, tokens_NxBxL, bytes_NxBxL, lengths_NxB, *, window_bits: int, precision: int):
    """M1 tables, each byte's interval and the coder for ``N`` tiles, one after another: ids stay on
    the device until the call returns; the ``[B, L, 256]`` tables never leave it."""

    def tile(x):
        tokens_BxL, bytes_BxL, lengths_B = x
        freq_BxLx256 = quantize.quantize_jnp(m1_lib.byte_logits(args, params, tokens_BxL), precision)
        cum_BxL, freq_BxL = quantize.byte_intervals_jnp(freq_BxLx256, bytes_BxL)
        valid_BxL = jnp.arange(bytes_BxL.shape[1])[None, :] < lengths_B[:, None]
        return coder.encode_lanes(bytes_BxL, cum_BxL, freq_BxL, valid_BxL, window_bits=window_bits,
                                  precision=precision)

    return jax.lax.map(tile, (tokens_NxBxL, bytes_NxBxL, lengths_NxB))


@register
class NeuralProxy(Proxy):
    """The neural proxy (``num_symbols = 2**window_bits``). Its artifacts are M1 (named by its workdir and
    pinned by its parameter hash) and the fitted entropy threshold, both in its manifest."""

    name = "neural"
    lossless = False  # decoding needs the side information of ``encode_detailed``
    settings = ("window_bits", "entropy_quantile", "entropy_threshold", "entropy_sample_bytes", "chunk_bytes",
                "min_segment_bytes", "quantize_bits", "m1_tile_positions")
    m1_workdir = ""  # where M1 was loaded from (recorded in the manifest)

    def __init__(self, model: m1_lib.M1, *, window_bits: int = 16, precision: int = quantize.DEFAULT_PRECISION,
                 entropy_quantile: float = 0.9, entropy_threshold: float | None = None, chunk_bytes: int = 2048,
                 min_segment_bytes: int = 1, batch_rows: int = 64,
                 tile_positions: int = m1_lib.DEFAULT_TILE_POSITIONS):
        self.model = model
        self.window_bits = coder.check_window_bits(window_bits)
        self.precision = quantize.check_precision(precision)
        self.num_symbols = 1 << self.window_bits
        if not 0.0 < entropy_quantile <= 1.0:
            raise ValueError(f"proxy.entropy_quantile={entropy_quantile} must lie in (0, 1].")
        self.entropy_quantile = float(entropy_quantile)
        self.entropy_threshold = None if entropy_threshold is None else float(entropy_threshold)
        if chunk_bytes < 1 or min_segment_bytes < 1 or batch_rows < 1:
            raise ValueError(
                f"proxy.chunk_bytes={chunk_bytes}, proxy.min_segment_bytes={min_segment_bytes} and "
                f"proxy.m1_batch_rows={batch_rows} must all be >= 1."
            )
        self.chunk_bytes = int(chunk_bytes)
        self.min_segment_bytes = int(min_segment_bytes)
        self.batch_rows = int(batch_rows)  # speed only: how many tiles one call holds
        self.tile_positions = m1_lib.check_tile_positions(tile_positions)  # part of the view's definition
        self.tiles_per_call = max(1, self.batch_rows * self.chunk_bytes // self.tile_positions)
        self._params = jax.device_put(model.params)

    def __getstate__(self):  # picklable for data-loader worker processes: parameters travel as numpy
        state = dict(self.__dict__)
        state.pop("_params")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._params = jax.device_put(self.model.params)

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_params(cls, args, params, *, context: int = 2048, **kwargs) -> "NeuralProxy":
        """From a ``ModelArgs`` and parameters (tests, notebooks); set a threshold or call ``fit_threshold``."""
        return cls(m1_lib.M1.from_params(args, params, context), **kwargs)

    @classmethod
    def from_settings(cls, proxy_config, m1: "m1_lib.M1 | None", sample_docs: list[bytes] | None = None) -> "NeuralProxy":
        """From ``config.proxy`` and a loaded M1; the threshold is ``proxy.entropy_threshold`` if > 0, else
        the ``entropy_quantile`` of M1's entropies over ``sample_docs`` (a fixed sample of the training split)."""
        p = proxy_config
        if m1 is None:
            raise ValueError("The neural proxy needs its M1: set --config.proxy.m1_workdir to a trained byte run "
                             "(configs/m1.py); proxy_jax.assemble.make_proxy loads it from there.")
        proxy = cls(
            m1,
            window_bits=p.window_bits,
            precision=p.quantize_bits,
            entropy_quantile=p.entropy_quantile,
            entropy_threshold=p.entropy_threshold if p.entropy_threshold > 0 else None,
            chunk_bytes=p.chunk_bytes,
            min_segment_bytes=p.min_segment_bytes,
            batch_rows=p.m1_batch_rows,
            tile_positions=p.m1_tile_positions,
        )
        if proxy.chunk_bytes > proxy.model.context:
            raise ValueError(
                f"proxy.chunk_bytes={proxy.chunk_bytes} exceeds the {proxy.model.context}-byte context M1 was "
                f"trained on; set --config.proxy.chunk_bytes={proxy.model.context} (or less)."
            )
        if proxy.entropy_threshold is None:
            if not sample_docs:
                raise ValueError("proxy.entropy_threshold=0 asks for a threshold fitted on a corpus sample, but no "
                                 "sample_docs were given; pass them or set --config.proxy.entropy_threshold.")
            proxy.fit_threshold(sample_docs)
        return proxy

    @classmethod
    def symbols_of(cls, proxy_config) -> int:
        return 1 << int(proxy_config.window_bits)

    @classmethod
    def build(cls, proxy_config, inputs: Inputs) -> "NeuralProxy":
        """M1 from ``inputs.m1`` (or loaded from ``proxy.m1_workdir``) and, unless the threshold is set, the
        corpus sample ``inputs.sample_docs`` to fit it on."""
        m1 = inputs.m1
        if m1 is None and inputs.load_m1 is not None:
            m1 = inputs.load_m1(proxy_config.m1_workdir)
        sample = inputs.sample_docs
        if proxy_config.entropy_threshold <= 0 and callable(sample):
            sample = sample(int(proxy_config.entropy_sample_bytes))
        proxy = cls.from_settings(proxy_config, m1, sample)
        proxy.m1_workdir = str(proxy_config.m1_workdir)
        return proxy

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], inputs: Inputs) -> "NeuralProxy":
        """The recorded M1 (its hash checked) with the recorded threshold: no threshold pass, no corpus."""
        where = manifest.get("m1_workdir", "")
        if manifest.get("m1_bucket_rule") != m1_lib.BUCKET_RULE or "m1_tile_positions" not in manifest:
            raise ValueError(f"The neural proxy of this run ran M1 in another layout (bucket rule "
                             f"{manifest.get('m1_bucket_rule', 'pow2-from-16 in batches of m1_batch_rows')!r}, now "
                             f"{m1_lib.BUCKET_RULE!r} in tiles), so its views cannot be reproduced; preprocess "
                             "again and train in a new --workdir.")
        if inputs.load_m1 is None:
            raise ValueError("The neural proxy's M1 cannot be loaded here (no loader was given).")
        m1 = inputs.load_m1(where)
        if m1.params_hash != manifest["m1_params_sha256"]:
            raise ValueError(f"M1 in {where} has changed since the run was trained (parameter hash "
                             f"{m1.params_hash[:12]}..., recorded {manifest['m1_params_sha256'][:12]}...); point "
                             "--config.proxy.m1_workdir at the M1 the run trained with.")
        proxy = cls(m1, window_bits=manifest["window_bits"], precision=manifest["quantize_bits"],
                    entropy_quantile=manifest["entropy_quantile"], entropy_threshold=manifest["entropy_threshold"],
                    chunk_bytes=manifest["chunk_bytes"], min_segment_bytes=manifest["min_segment_bytes"],
                    batch_rows=manifest["m1_batch_rows"], tile_positions=manifest["m1_tile_positions"])
        proxy.m1_workdir = where
        return proxy

    def fit_threshold(self, docs: list[bytes]) -> float:
        """Set the segmentation threshold to the entropy quantile over ``docs``; returns it."""
        ent = self._entropies(list(docs))
        self.entropy_threshold = segment.entropy_threshold(ent, self.entropy_quantile)
        return self.entropy_threshold

    # ---- encoding ---------------------------------------------------------------------------------------
    def _entropies(self, docs: list[bytes]) -> list[np.ndarray]:
        return segment.doc_entropies(self.model, docs, chunk_bytes=self.chunk_bytes,
                                     tile_positions=self.tile_positions, tiles_per_call=self.tiles_per_call,
                                     device_params=self._params)

    def segments(self, docs: list[bytes]) -> list[list[bytes]]:
        """Each document cut into its segments (one batched M1 entropy pass)."""
        if self.entropy_threshold is None:
            raise ValueError("The neural proxy has no entropy threshold yet; pass entropy_threshold= or call "
                             "fit_threshold(sample_docs) first.")
        ent = self._entropies(docs)
        return [
            segment.split(doc, segment.segment_starts(e, self.entropy_threshold, self.chunk_bytes,
                                                      self.min_segment_bytes))
            for doc, e in zip(docs, ent)
        ]

    def encode_segments(self, segments: list[bytes]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Code independent segments: ``(ids, nbytes)`` for each (M1 context restarts in each)."""
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int32), np.zeros(0, np.int32))] * len(segments)
        pending = [
            (idx, _code_tiles(self.model.args, self._params, tokens, data, lengths, window_bits=self.window_bits,
                              precision=self.precision))
            for idx, _, tokens, data, lengths in m1_lib.tiled_batches(segments, self.tile_positions,
                                                                       self.chunk_bytes, self.tiles_per_call)
        ]
        for idx, res in pending:
            ids, nbytes, counts = (np.asarray(a).reshape(-1, *a.shape[2:]) for a in res)
            for j, i in enumerate(idx):
                m = int(counts[j])
                out[i] = (ids[j, :m].copy(), nbytes[j, :m].copy())
        return out

    def encode_detailed(self, docs: list[bytes]) -> list[NeuralCode]:
        docs = [bytes(d) for d in docs]
        segs = self.segments(docs)
        flat = [s for ss in segs for s in ss]
        coded = self.encode_segments(flat)
        result, k = [], 0
        for ss in segs:
            parts = coded[k : k + len(ss)]
            k += len(ss)
            result.append(NeuralCode(
                ids=np.concatenate([p[0] for p in parts]).astype(vocab.ID_DTYPE) if parts else np.zeros(0, np.int32),
                nbytes=np.concatenate([p[1] for p in parts]).astype(np.int32) if parts else np.zeros(0, np.int32),
                segment_ids=np.asarray([len(p[0]) for p in parts], np.int32),
            ))
        return result

    def encode_batch(self, docs: list[bytes]) -> list[np.ndarray]:
        return [c.ids for c in self.encode_detailed(docs)]

    def encode(self, data: bytes) -> np.ndarray:
        return self.encode_batch([data])[0]

    # ---- decoding ---------------------------------------------------------------------------------------
    def decode(self, ids, code: NeuralCode | None = None) -> bytes:
        """Restore a document from its :class:`NeuralCode` (pass it as ``ids`` or as ``code``)."""
        if isinstance(ids, NeuralCode):
            code = ids
        if code is None:
            raise ValueError("The neural view is not self-delimiting: decode needs the NeuralCode from "
                             "encode_detailed (bytes per id and segment ends), not the ids alone.")
        return self.decode_codes([code])[0]

    def decode_codes(self, codes: list[NeuralCode]) -> list[bytes]:
        """Decode many documents; all their segments advance in lockstep, one M1 call per byte position."""
        lanes, owner = [], []
        for d, c in enumerate(codes):
            ends = np.cumsum(c.segment_ids)
            for s, e in zip(ends - c.segment_ids, ends):
                lanes.append(reference.LaneDecoder(c.ids[s:e], c.nbytes[s:e], window_bits=self.window_bits,
                                                   precision=self.precision))
                owner.append(d)
        for i, lane in enumerate(lanes):
            if lane.total > self.chunk_bytes:
                raise ValueError(f"A segment of {lane.total} bytes is longer than proxy.chunk_bytes={self.chunk_bytes}.")
        groups = m1_lib.groups_by_bucket([b"\0" * lane.total for lane in lanes], self.chunk_bytes)
        for length, idx in groups.items():
            per_tile = m1_lib.tile_rows(length, self.tile_positions)  # the encoder's tile shape
            for s in range(0, len(idx), per_tile):
                part = [lanes[i] for i in idx[s : s + per_tile]]
                for pos in range(max(lane.total for lane in part)):
                    rows = [bytes(lane.out) for lane in part] + [b""] * (per_tile - len(part))
                    tokens = m1_lib.rows_to_tokens([r + b"\0" for r in rows], length)
                    freq = m1_lib.tile_tables(self.model.args, self._params, tokens[None], precision=self.precision)
                    freq = np.asarray(freq[0, :, pos])
                    for j, lane in enumerate(part):
                        if not lane.done:
                            lane.step(freq[j])
        out = [bytearray() for _ in codes]
        for lane, d in zip(lanes, owner):
            out[d] += lane.out
        return [bytes(o) for o in out]

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_symbols": self.num_symbols,
            "m1_workdir": self.m1_workdir,
            "m1_params_sha256": self.model.params_hash,
            "m1_args": dataclasses.asdict(self.model.args),
            "quantization": quantize.RULE_NAME,
            "quantize_bits": self.precision,
            "window_bits": self.window_bits,
            "entropy_quantile": self.entropy_quantile,
            "entropy_threshold": self.entropy_threshold,
            "chunk_bytes": self.chunk_bytes,
            "min_segment_bytes": self.min_segment_bytes,
            "m1_batch_rows": self.batch_rows,
            "m1_tile_positions": self.tile_positions,
            "m1_bucket_rule": m1_lib.BUCKET_RULE,
        }
