"""Weighted mixtures of sources (``config.data.mixture``): the definition, its checks, and which source
each document slot reads.

A mixture is a list of components, each a source of ``proxy_jax.data.corpus`` (``source``, ``path`` and
the source's own keys) with a ``name`` and a ``weight``; optional ``stages`` change the weights from a
given optimiser step on. :func:`resolve` reads it (a JSON or YAML file, inline JSON, a list of dicts or
a dict with ``components`` and ``stages``), checks it and returns its canonical form: weights normalised
to sum to 1, every stage's too. That form is what ``config.json`` records, so a resume compares it with
the saved one (:func:`resume_changes`: the weights may change on resume, the components may not).

Slots. Each virtual data shard reads documents one at a time (``proxy_jax.data.mixture_packing``); its
n-th read is slot n, and the slot's component is a pure function of (seed, shard, n, the weights of the
step the document starts in): the slot's point ``u_n = frac(h(seed, shard) + n * phi)`` (phi the golden
ratio, in 64-bit fixed point) falls in one component's interval of the cumulative weights. That
sequence has low discrepancy: after n slots each component has been drawn ``n * weight`` times give or
take a few documents, where independent draws stray by ``sqrt(n)``. Each component keeps its own
shuffled order and epochs (its own document stage), so nothing here depends on how many processes read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, Iterable, Iterator

import ml_collections
import numpy as np

from proxy_jax.data import mixing

# Keys a component may carry: its own, and the keys of config.data that describe a source.
OWN_KEYS = ("name", "source", "weight", "rate_peak")
SOURCE_KEYS = ("path", "glob", "text_field", "skip_malformed", "tfds_split", "tfds_data_dir", "index",
               "val_fraction")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")  # usable as one part of a metric key
_ALPHA = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: the step of the slots' Weyl sequence
_PURPOSE_SLOTS = 3  # keeps the slot sequence independent of the documents' own draws (mixing)
_MASK64 = (1 << 64) - 1


class MixtureError(ValueError):
    """A mixture definition that cannot be used."""


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise MixtureError(f"--config.data.mixture={path!r} is not a file; point it at a JSON or YAML mixture file.")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # JSON and YAML parsers raise their own types
        raise MixtureError(f"--config.data.mixture={path!r} does not parse ({e}); fix the file.") from None


def _relative_to(spec: Any, folder: str) -> Any:
    """A mixture file's component paths, relative ones taken from the file's folder (a TFDS name and a URL
    stay as they are)."""
    comps = spec.get("components") if isinstance(spec, dict) else spec
    for c in comps if isinstance(comps, list) else ():
        path = c.get("path") if isinstance(c, dict) else None
        if isinstance(path, str) and path and c.get("source") != "tfds" and "://" not in path:
            c["path"] = os.path.normpath(os.path.join(folder, os.path.expanduser(path)))
    return spec


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MixtureError(f"{where}={value!r} is not a number; give a weight >= 0.")
    if value < 0:
        raise MixtureError(f"{where}={value!r} is negative; weights must be >= 0.")
    return float(value)


def _normalised(weights: list[float], where: str) -> list[float]:
    total = sum(weights)
    if total <= 0:
        raise MixtureError(f"{where} are all zero; give at least one component a positive weight.")
    if abs(total - 1.0) <= 1e-9:
        return list(weights)  # already normalised: resolving a resolved mixture changes nothing
    return [w / total for w in weights]


def resolve(value: Any) -> dict[str, Any] | None:
    """The canonical mixture of ``config.data.mixture`` (None when it is empty), or one sentence."""
    value = _plain(value)
    if value in ("", None, [], {}):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except ValueError as e:
                raise MixtureError(f"--config.data.mixture holds inline JSON that does not parse ({e}); fix it or "
                                   "point it at a JSON or YAML file.") from None
        else:
            value = _relative_to(_read_file(text), os.path.dirname(os.path.abspath(text)))
    if isinstance(value, list):
        value = {"components": value}
    if not isinstance(value, dict) or not isinstance(value.get("components"), list) or not value["components"]:
        raise MixtureError("data.mixture must be a list of components (or a mapping with 'components' and "
                           "'stages'); give at least one component.")
    extra = sorted(set(value) - {"components", "stages"})
    if extra:
        raise MixtureError(f"data.mixture has unknown keys {extra}; it takes 'components' and 'stages'.")
    components = [_component(c, i) for i, c in enumerate(value["components"])]
    names = [c["name"] for c in components]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MixtureError(f"data.mixture names {dup} more than once; give every component its own name.")
    stages = value.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise MixtureError("data.mixture.stages must be a list of {start_step, weights} mappings.")
    stages = [_stage(s, names) for s in stages]
    starts = [s["start_step"] for s in stages]
    if starts != sorted(set(starts)):
        raise MixtureError(f"data.mixture.stages start at steps {starts}; list them in increasing order, each once.")
    given = ["weight" in c for c in components]
    if stages and starts[0] == 0:
        if any(given):
            raise MixtureError("data.mixture has a stage at start_step 0 and component weights; give the weights "
                               "from step 0 in one place only.")
        first = stages.pop(0)["weights"]
        for c in components:
            c["weight"] = first[c["name"]]
    elif not all(given):
        missing = [c["name"] for c, g in zip(components, given) if not g]
        raise MixtureError(f"data.mixture components {missing} have no weight; give each a 'weight' (or a stage "
                           "at start_step 0).")
    weights = _normalised([c["weight"] for c in components], "data.mixture's component weights")
    for c, w in zip(components, weights):
        c["weight"] = w
    return {"components": components, "stages": stages}


def _component(c: Any, i: int) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise MixtureError(f"data.mixture component {i} is {type(c).__name__}; give a mapping with name, source, "
                           "path and weight.")
    from proxy_jax.data import corpus

    name = c.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise MixtureError(f"data.mixture component {i} has name {name!r}; use letters, digits, '_' and '-' "
                           "(it becomes part of metric keys such as data/NAME/docs).")
    unknown = sorted(set(c) - set(OWN_KEYS) - set(SOURCE_KEYS))
    if unknown:
        raise MixtureError(f"data.mixture component {name!r} has unknown keys {unknown}; it takes "
                           f"{', '.join(OWN_KEYS + SOURCE_KEYS)}.")
    if c.get("source") not in corpus.SOURCES:
        raise MixtureError(f"data.mixture component {name!r} has source {c.get('source')!r}; use one of "
                           f"{', '.join(corpus.SOURCES)}.")
    if c["source"] != "stdlib" and not c.get("path"):
        raise MixtureError(f"data.mixture component {name!r} (source {c['source']!r}) needs a 'path'.")
    out = dict(c)
    if "weight" in out:
        out["weight"] = _weight(out["weight"], f"data.mixture component {name!r} weight")
    if "rate_peak" in out:
        r = out["rate_peak"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise MixtureError(f"data.mixture component {name!r} rate_peak={r!r} is not a rate; set it within [0, 1].")
        out["rate_peak"] = float(r)
    return out


def _stage(s: dict, names: list[str]) -> dict[str, Any]:
    extra = sorted(set(s) - {"start_step", "weights"})
    start = s.get("start_step")
    if extra or isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise MixtureError(f"data.mixture stage {s!r} must be {{start_step: a step >= 0, weights: {{name: weight}}}}.")
    weights = s.get("weights")
    if not isinstance(weights, dict):
        raise MixtureError(f"data.mixture stage at step {start} has no 'weights' mapping of component names.")
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise MixtureError(f"data.mixture stage at step {start} weighs unknown components {unknown}; the "
                           f"components are {names}.")
    where = f"data.mixture stage at step {start}"
    ws = _normalised([_weight(weights.get(n, 0.0), f"{where} weight of {n!r}") for n in names], f"{where}'s weights")
    return {"start_step": start, "weights": dict(zip(names, ws))}


def check(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The canonical mixture of ``config`` (None without one), after every check: a non-default ``data.path``
    beside a mixture is refused (the mixture names every path), and so is a component ``rate_peak`` that has
    no schedule to scale."""
    mix = resolve(config.data.get("mixture", ""))
    if mix is not None:
        if config.data.path:
            raise MixtureError(f"--config.data.path={config.data.path!r} is set beside data.mixture, which names its "
                               "own paths; drop data.path (or the mixture).")
        rate_scales(mix, config.mix)
    return mix


def rate_scales(mix: dict[str, Any], run_mix: ml_collections.ConfigDict) -> list[float]:
    """Per component, the factor on the run's rate schedule (1 unless it sets ``rate_peak``)."""
    peak = float(run_mix.rate_peak)
    scales = []
    for c in mix["components"]:
        if "rate_peak" not in c:
            scales.append(1.0)
        elif peak > 0:
            scales.append(c["rate_peak"] / peak)
        elif c["rate_peak"] > 0:
            raise MixtureError(
                f"data.mixture component {c['name']!r} sets rate_peak={c['rate_peak']} but --config.mix.rate_peak=0, "
                "so there is no schedule to scale; set mix.rate_peak > 0 or drop the component's rate_peak.")
        else:
            scales.append(0.0)
    return scales


def resolve_config(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Replaces ``config.data.mixture`` by its canonical form (what config.json records); returns it."""
    mix = check(config)
    if mix is not None:
        config.data.mixture = mix
    return mix


def names(mix: dict[str, Any]) -> list[str]:
    return [c["name"] for c in mix["components"]]


def doc_metrics(mixture_docs, mix: dict[str, Any]) -> dict[str, Any]:
    """``{"data/NAME/docs": count}`` from a global batch's ``mixture_docs`` [rows, C] (jax or numpy): the sum
    over its rows is the documents every shard has drawn from each component so far."""
    counts = mixture_docs.sum(axis=0)
    return {f"data/{name}/docs": counts[i] for i, name in enumerate(names(mix))}


def weight_plan(mix: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
    """[(start_step, cumulative weights float64 [C])], from step 0 on; the last entry of each is exactly 1."""
    stages = [(0, [c["weight"] for c in mix["components"]])]
    stages += [(s["start_step"], [s["weights"][n] for n in names(mix)]) for s in mix["stages"]]
    return [(int(start), cumulative(ws)) for start, ws in stages]


def cumulative(weights: list[float]) -> np.ndarray:
    """Cumulative normalised weights (float64 [C], the last exactly 1) of weights that are not all zero."""
    cum = np.cumsum(np.asarray(weights, np.float64))
    cum /= cum[-1]
    cum[-1] = 1.0
    return cum


def weights_at(plan: list[tuple[int, np.ndarray]], step: int) -> np.ndarray:
    """The cumulative weights of the stage holding ``step``."""
    cum = plan[0][1]
    for start, c in plan:
        if step >= start:
            cum = c
    return cum


def slot_uniforms(seed: int, shard: int, slots_N) -> np.ndarray:
    """The points in [0, 1) of slots ``slots_N`` of virtual shard ``shard`` (float64 [N]): a Weyl sequence
    started at a hash of (seed, shard), a pure function of its arguments."""
    offset = np.uint64(mixing._hash(int(seed), int(shard), _PURPOSE_SLOTS))  # pylint: disable=protected-access
    slots = np.asarray(slots_N, np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = offset + slots * np.uint64(_ALPHA)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def components_of(seed: int, shard: int, slots_N, cum_weights: np.ndarray) -> np.ndarray:
    """The component (int64 [N]) each slot reads under cumulative weights ``cum_weights``."""
    return np.searchsorted(cum_weights, slot_uniforms(seed, shard, slots_N), side="right").astype(np.int64)


def component_of(seed: int, shard: int, slot: int, cum_weights: np.ndarray) -> int:
    return int(components_of(seed, shard, [slot], cum_weights)[0])


def data_config(data: ml_collections.ConfigDict, component: dict[str, Any]) -> ml_collections.ConfigDict:
    """``config.data`` as a single source: the component's source and keys over the run's own values."""
    out = {**data.to_dict(), "mixture": "", "source": component["source"], "path": ""}
    out.update({key: component[key] for key in SOURCE_KEYS if key in component})
    return ml_collections.ConfigDict(out)


def preprocessed_paths(data: ml_collections.ConfigDict) -> list[str]:
    """The folders of preprocessed shards the run reads (its own, or its components')."""
    mix = resolve(data.get("mixture", ""))
    if mix is None:
        return [data.path] if data.source == "preprocessed" else []
    return [c["path"] for c in mix["components"] if c["source"] == "preprocessed"]


def interleave(lists: list[list], cum_weights: np.ndarray, *, seed: int = 0, limit: int = 0) -> list:
    """Items of ``lists`` (one per component) drawn slot by slot at the weights, each list in its order and
    read once; stops when a component with weight > 0 has none left (or at ``limit`` items if > 0)."""
    out, cursors, slot = [], [0] * len(lists), 0
    while not limit or len(out) < limit:
        c = component_of(seed, 0, slot, cum_weights)
        slot += 1
        if cursors[c] == len(lists[c]):
            break
        out.append(lists[c][cursors[c]])
        cursors[c] += 1
    return out


def cycle_at_weights(sources: list, cum_weights: np.ndarray, seed: int = 0) -> Iterator[bytes]:
    """Documents of ``sources`` at the weights, each source in its own shuffled order, a source that runs out
    starting a new order, until every source with weight > 0 has been read through once (the tokenizer's
    training stream)."""
    weights = np.diff(np.concatenate([[0.0], cum_weights]))
    orders = [np.random.default_rng([seed, c]).permutation(len(s)) for c, s in enumerate(sources)]
    cursors, epochs = [0] * len(sources), [0] * len(sources)
    unread = {c for c, w in enumerate(weights) if w > 0 and len(sources[c])}
    slot = 0
    while unread:
        c = component_of(seed, 0, slot, cum_weights)
        slot += 1
        if not len(sources[c]):
            return
        if cursors[c] == len(orders[c]):
            epochs[c] += 1
            orders[c] = np.random.default_rng([seed, c, epochs[c]]).permutation(len(sources[c]))
            cursors[c] = 0
        yield sources[c][int(orders[c][cursors[c]])]
        cursors[c] += 1
        if cursors[c] == len(orders[c]):
            unread.discard(c)


def fingerprint(mix: dict[str, Any], sources: Iterable) -> str:
    """Identifies the mixture's documents (its sources' fingerprints) and weights (the tokenizer's cache key)."""
    weights = [[c["name"], c["weight"]] for c in mix["components"]]
    h = hashlib.sha256(json.dumps([weights, mix["stages"]], sort_keys=True).encode())
    for s in sources:
        h.update(s.fingerprint().encode())
    return h.hexdigest()


def resume_changes(saved: Any, config: ml_collections.ConfigDict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(resumable, frozen) changes of the mixture between config.json's ``saved`` and ``config``, as
    ``{key: (saved, now)}``. The weights and stages may change on resume (each component keeps its own place
    in the iterator state); the components themselves (names, sources, paths, keys, rates) may not. A
    component's ``index`` fixed when the run started is taken into ``config``, as ``data.index`` is."""
    saved, now = resolve(saved), resolve_config(config)
    if saved == now:
        return {}, {}
    if saved is None or now is None:
        return {}, {"data.mixture": (saved, now)}
    for s, n in zip(saved["components"], now["components"]):
        if "index" in s and "index" not in n and s["name"] == n["name"]:
            n["index"] = s["index"]
    if names(saved) != names(now):
        return {}, {"data.mixture components": (names(saved), names(now))}
    frozen = {}
    for s, n in zip(saved["components"], now["components"]):
        for key in sorted((set(s) | set(n)) - {"weight"}):
            if s.get(key) != n.get(key):
                frozen[f"data.mixture.{s['name']}.{key}"] = (s.get(key), n.get(key))
    if frozen:
        return {}, frozen
    weights = lambda m: {"weights": [c["weight"] for c in m["components"]], "stages": m["stages"]}  # noqa: E731
    if weights(saved) == weights(now):
        return {}, {}
    return {"data.mixture.weights": (weights(saved), weights(now))}, {}


def fix_index(config: ml_collections.ConfigDict, sources: list) -> None:
    """Writes each component's resolved index ("full" or "lazy") into ``config.data.mixture`` where it was
    left to ``data.index="auto"``, so the run reads every component one way for its life."""
    mix = config.data.mixture
    for c, source in zip(mix["components"], sources):
        lazy_capable = c["source"] in ("jsonl", "parquet", "hf_disk", "arrayrecord")
        if c.get("index", config.data.index) == "auto" and lazy_capable:
            c["index"] = "lazy" if source.lazy else "full"
