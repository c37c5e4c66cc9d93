"""A trained workdir as an lm-evaluation-harness model (``proxy_jax``): JAX only, no export, no torch.

Importing this module registers the class with ``lm_eval.api.registry``; ``python -m proxy_jax.lm_eval``
imports it and then runs lm-eval's own command line (lm-eval 0.4.13 has no plugin discovery, so the
plain ``lm_eval`` command cannot see a model that no one imported). Model arguments:
``workdir=DIR[,step=N][,batch_size=B][,window=W][,max_length=M][,seed=S]``; the CLI's ``--batch_size`` is
used when ``batch_size`` is not among them (``auto``: the run's ``train.eval_batch_size``).

Text reaches the model in the run's own text format (``config.text_layout``), the way the library
scores and prompts it (``_Format`` below is the one place that knows it):

* ``loglikelihood(context, continuation)``: the model reads ``prefix + context + continuation`` with
  ``prefix`` = ``1 12`` (runs with sentinels) or ``1`` (byte and tokenizer baselines); the continuation's
  log-probabilities under head 0 over the run's logical vocabulary (as bits per byte scores them).
  ``is_greedy``: every continuation id is the argmax of the ids greedy generation may write. An input
  longer than ``max_length`` (default: the trained context ``data.seq_len``) keeps its last
  ``max_length + 1`` ids, each at its offset in the document (as a later evaluation window sees it).
  The tokenizer baseline encodes ``context + continuation`` and ``context`` and scores the ids after
  the context's (spaces at the end of the context move to the continuation).
* ``loglikelihood_rolling(text)``: exactly the library's bits-per-byte scoring of ``text`` as one
  document (``evaluation.bpb``): ``document_ids`` cut into windows of ``window`` predictions (stride
  ``window``, default ``train.eval_window``), every scored id predicted once with the context since its
  window began; scored are raw bytes (the tokenizer baseline: its symbols). Each document starts its
  own windows, as lm-eval asks (a document's score never depends on its neighbours);
  ``python -m proxy_jax.evaluate`` runs the documents back to back through shared windows, so the two
  agree exactly for one document per ``--data`` file, or when all the documents fit in one window.
  Unlike lm-eval's Hugging Face backend, the last window is not topped up with earlier context.
* ``generate_until(context, gen_kwargs)``: ``evaluation.sampler.Sampler.complete``, the library's
  generation (greedy unless ``do_sample``), ``until`` strings cut, ``max_gen_toks`` ids written (bytes,
  or tokens for the tokenizer baseline) after a prompt cut from the left to fit ``max_length`` beside
  them; the output is decoded as UTF-8 (invalid bytes become U+FFFD).

Batches run on the run's mesh on whatever devices JAX has (rows split over the batch axes, padded up to a
multiple of them); every process computes every request alike. Not supported: chat templates
(``--apply_chat_template``), which a pretraining run does not have.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import lm_eval.models  # noqa: F401 - lm-eval's own models first: get_model imports them only into an empty registry
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from proxy_jax import restore as restore_lib
from proxy_jax import sharding, storage, text_format, vocab
from proxy_jax.evaluation import bpb
from proxy_jax.evaluation import sampler as sampler_lib

log = logging.getLogger(__name__)
GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p"}


def _restore(workdir: str, step: int | None) -> restore_lib.RestoredRun:
    """The one call that reads a run back (``proxy_jax.restore``: parameters, model, mesh, record)."""
    return restore_lib.restore(storage.resolve(workdir), step)


class _Format:
    """How the run writes documents and prompts: its recorded text format (``proxy_jax.text_format``)."""

    def __init__(self, run: restore_lib.RestoredRun):
        self.fmt = text_format.get(run.text_format)
        self.layout = self.fmt.name
        self.proxy = run.proxy if self.fmt.symbols else None  # the tokenizer its record pins
        self.encode: Callable[[bytes], np.ndarray] | None = self.proxy.encode if self.proxy else None
        self.prefix = self.fmt.prefix
        self.scored = self.fmt.scored
        self.allowed_V = self.fmt.allowed_mask(run.padded_vocab_size, run.vocab_size)

    def body(self, text: bytes) -> np.ndarray:
        """Ids of ``text`` inside a document (raw bytes, or the proxy's symbols)."""
        return np.asarray(self.encode(text) if self.encode else vocab.encode_raw(text), np.int32)

    def rows(self, text: bytes, window: int) -> list[dict[str, np.ndarray]]:
        """The library's evaluation windows of ``text`` as one document."""
        return list(bpb.eval_rows([text], window, 1, self.fmt, self.encode))

    def sampler(self, run: restore_lib.RestoredRun) -> sampler_lib.Sampler:
        return sampler_lib.Sampler(run, self.fmt)


def _split_pair(fmt: _Format, context: bytes, continuation: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Context and continuation ids; a tokenizer reads them as one text (its merges cross the seam)."""
    if fmt.encode is None:
        return fmt.body(context), fmt.body(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, head = fmt.body(context + continuation), fmt.body(context)
    return whole[: head.size], whole[head.size :]


def _bucket(n: int, most: int) -> int:
    """Row length for ``n`` ids: a power of two (few compilations), at most ``most``."""
    return min(most, max(64, 1 << (n - 1).bit_length()))


@register_model("proxy_jax")
class ProxyJaxLM(LM):
    """lm-eval model over a proxy_jax workdir (see the module docstring)."""

    def __init__(self, workdir: str = "", step: int | None = None, batch_size: int | str = 1, window: int = 0,
                 max_length: int = 0, seed: int = 0, max_batch_size: int | None = None, device: str | None = None,
                 **unknown: Any):  # lm-eval's --device (default cuda:0) and --max_batch_size mean nothing here
        super().__init__()
        if not workdir:
            raise ValueError("--model proxy_jax needs --model_args workdir=DIR (a training workdir).")
        if unknown:
            raise ValueError(f"--model_args {', '.join(sorted(unknown))} not understood by proxy_jax; it takes "
                             "workdir, step, batch_size, window, max_length and seed.")
        auto = str(batch_size).startswith("auto")
        batch_size = int(batch_size) if str(batch_size).isdigit() else batch_size  # the CLI's --batch_size is text
        for key, value in (("window", window), ("max_length", max_length), ("batch_size", 1 if auto else batch_size)):
            if not isinstance(value, int) or value < 0 or (key == "batch_size" and value < 1):
                raise ValueError(f"--model_args {key}={value} must be a whole number >= 1"
                                 f"{' (or auto)' if key == 'batch_size' else ' (0: the default)'}.")
        self._bind(_restore(workdir, None if step in (None, "") else int(step)), 0 if auto else batch_size, window,
                   max_length, seed)

    @classmethod
    def from_run(cls, run: restore_lib.RestoredRun) -> "ProxyJaxLM":
        """The model over ``run`` as it is (e.g. a training run's live parameters, which the caller may swap
        in ``run.params`` between evaluations: the scoring function is compiled once), with the run's defaults."""
        self = cls.__new__(cls)
        LM.__init__(self)
        self._bind(run, 0, 0, 0, 0)
        return self

    def _bind(self, run: restore_lib.RestoredRun, batch_size: int, window: int, max_length: int, seed) -> None:
        """``batch_size`` 0: the run's ``train.eval_batch_size``; ``window``/``max_length`` 0: the run's own."""
        self.run = run
        self.fmt = _Format(self.run)
        config = self.run.config
        self.window = window or int(config.train.eval_window)
        self.max_length = max_length or int(config.data.seq_len)
        rows = batch_size or int(config.train.eval_batch_size)
        split = int(np.prod([self.run.mesh.shape[a] for a in sharding.BATCH_AXES]))
        self.batch_size = -(-rows // split) * split  # whole rows per device of the batch axes
        self.seed = int(seed)
        self._score = self._make_score()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "ProxyJaxLM":
        from lm_eval import utils

        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "ProxyJaxLM":
        # --model_args win over the CLI's --batch_size (which lm-eval always passes, 1 by default).
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    def chat_template(self, chat_template: bool | str = False) -> str:
        if chat_template:
            raise ValueError("proxy_jax runs have no chat template; drop --apply_chat_template.")
        return ""

    # ---- scoring ------------------------------------------------------------------------------------

    def _make_score(self):
        """Jitted ``(params, batch) -> (nll, greedy)`` per target, head 0, logical vocabulary (as eval_step)."""
        run, allowed_V = self.run, jnp.asarray(self.fmt.allowed_V)
        vocab_size, model = run.vocab_size, run.model

        def score(params, batch):
            tokens_BxT = batch["tokens"]
            logits, _ = model.apply({"params": params}, tokens_BxT[:, :-1], batch["segment_ids"][:, :-1],
                                    batch["positions"][:, :-1])
            logits_BxLxV = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits[:, :, 0],
                                     jnp.finfo(jnp.float32).min)
            targets_BxL = tokens_BxT[:, 1:]
            logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
            picked_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
            best_BxL = jnp.argmax(jnp.where(allowed_V, logits_BxLxV, -jnp.inf), axis=-1)
            return logz_BxL - picked_BxL, best_BxL == targets_BxL

        jitted = jax.jit(score, in_shardings=(run.param_shardings, sharding.batch_sharding(run.mesh)),
                         out_shardings=NamedSharding(run.mesh, P()))
        rules = sharding.logical_rules(run.config)

        def run_batch(rows: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
            length = rows[0]["tokens"].size
            empty = {k: np.zeros(length, np.int32) for k in rows[0]}
            batch = {k: np.stack([r[k] for r in rows] + [empty[k]] * (self.batch_size - len(rows)))
                     for k in empty}
            count, index = jax.process_count(), jax.process_index()
            local = self.batch_size // count
            batch = {k: v[index * local : (index + 1) * local] for k, v in batch.items()}
            with jax.set_mesh(run.mesh), nn.logical_axis_rules(rules):
                nll, greedy = jitted(run.params, sharding.host_to_global(batch, run.mesh))
            return np.asarray(nll)[: len(rows)], np.asarray(greedy)[: len(rows)]

        return run_batch

    def _score_rows(self, rows: list[dict[str, np.ndarray]], masks: list[np.ndarray], disable_tqdm: bool):
        """Per row: (sum of the nll of targets under ``mask`` in float64, all of them greedy)."""
        from proxy_jax import progress

        order = sorted(range(len(rows)), key=lambda i: -rows[i]["tokens"].size)
        out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        starts = range(0, len(order), self.batch_size)
        for s in progress.iterate(starts, len(starts), desc="proxy_jax", unit="batch",
                                  disable=disable_tqdm or jax.process_index() != 0):
            chunk = order[s : s + self.batch_size]
            length = _bucket(max(rows[i]["tokens"].size for i in chunk), max(self.window, self.max_length) + 1)
            nll, greedy = self._score(
                [{k: np.pad(v, (0, length - v.size)) for k, v in rows[i].items()} for i in chunk])
            for j, i in enumerate(chunk):
                m = masks[i]
                out[i] = (float(np.sum(nll[j, : m.size][m], dtype=np.float64)), bool(np.all(greedy[j, : m.size][m])))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows, masks = [], []
        for req in requests:
            context, continuation = (s.encode("utf-8") for s in req.args)
            head, tail = _split_pair(self.fmt, context, continuation)
            if tail.size > self.max_length:
                raise ValueError(f"A continuation of {tail.size} ids does not fit in max_length={self.max_length}; "
                                 f"pass --model_args ...,max_length={tail.size} or more.")
            ids = np.concatenate([np.asarray(self.fmt.prefix, np.int32), head, tail]).astype(np.int32)
            positions = np.arange(ids.size, dtype=np.int32)
            keep = slice(max(0, ids.size - self.max_length - 1), ids.size)  # the last max_length + 1 ids
            ids, positions = ids[keep], positions[keep]
            rows.append({"tokens": ids, "segment_ids": np.ones_like(ids), "positions": positions})
            mask = np.zeros(ids.size - 1, bool)
            mask[ids.size - 1 - tail.size :] = True
            masks.append(mask)
        results = [(-nll, greedy) for nll, greedy in self._score_rows(rows, masks, disable_tqdm)]
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, masks, owner = [], [], []
        for n, req in enumerate(requests):
            for row in self.fmt.rows(req.args[0].encode("utf-8"), self.window):
                live = int(np.sum(row["segment_ids"] != 0))  # drop the padding of a document's last window
                row = {k: v[:live] for k, v in row.items()}
                targets = row["tokens"][1:]
                rows.append(row)
                masks.append(self.fmt.scored(targets) & (row["segment_ids"][:-1] != 0))
                owner.append(n)
        totals = np.zeros(len(requests), np.float64)
        for n, (nll, _) in zip(owner, self._score_rows(rows, masks, disable_tqdm)):
            totals[n] += nll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, -float(total))
        return [-float(t) for t in totals]

    # ---- generation ---------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        sampler = self.fmt.sampler(self.run)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        out: list[str] = [""] * len(requests)
        rng = jax.random.key(self.seed)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            if set(kwargs) - GEN_KEYS:
                log.warning("proxy_jax ignores generation arguments %s.", sorted(set(kwargs) - GEN_KEYS))
            until = kwargs.get("until") or []
            stop = [s.encode("utf-8") for s in ([until] if isinstance(until, str) else until)]
            max_new = int(kwargs.get("max_gen_toks", 256))
            temperature = float(kwargs.get("temperature", 0.0))
            if not kwargs.get("do_sample", temperature > 0):  # lm-eval's rule: greedy unless asked to sample
                temperature = 0.0
            top_p = float(kwargs.get("top_p", 1.0))
            prompts = {i: self._fit_prompt(requests[i].args[0].encode("utf-8"), max_new) for i in members}
            order = sorted(members, key=lambda i: -len(prompts[i]))
            for s in range(0, len(order), self.batch_size):
                chunk = order[s : s + self.batch_size]
                rng, key = jax.random.split(rng)
                texts, _ = sampler.complete([prompts[i] for i in chunk], max_new=max_new, stop=stop,
                                            temperature=temperature, top_p=top_p, rng=key)
                for i, text in zip(chunk, texts):
                    out[i] = text.decode("utf-8", errors="replace")
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _fit_prompt(self, prompt: bytes, max_new: int) -> bytes:
        """``prompt`` without the leading bytes that would not fit in ``max_length`` beside ``max_new`` new ids."""
        budget = max(1, self.max_length - max_new - len(self.fmt.prefix))
        while (n := self.fmt.body(prompt).size) > budget:
            prompt = prompt[n - budget :]
        return prompt
