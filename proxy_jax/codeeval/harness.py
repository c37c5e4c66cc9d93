"""Score completions on a benchmark: run every (problem, completion) in the sandbox, report pass@k.

``score(problems, completions)`` takes ``completions[task_id]`` = the n completions (text after the
prompt) of that problem. Classic problems run ``problems.test_program``; plus problems first run the
canonical solution once on their inputs (``problems.expected_program``, which also times each input)
and then every completion through ``problems.plus_program`` under evalplus's time limits (per input
from the canonical times, per program their capped sum; ``timeout_s`` applies to classic problems);
``base_only=True`` checks the base inputs only: "HumanEval" rather than "HumanEval+" numbers. A
completion passes iff its sandbox status is "passed".

Resume: with ``out_path``, one JSON line per problem is appended as soon as all of its completions
have finished; a later call reads the file first and skips every problem whose line carries the same
fingerprint (a hash of task id, prompt, completions and base_only), so an interrupted run only re-runs
unfinished problems and a changed completion is never answered from a stale line.

Returns ``{"pass@k": {"pass@1": ..., ...}, "per_problem": {task_id: record}, "n_problems", "resumed"}``;
pass@k is reported for every requested k no larger than the smallest n.
``canonical_completions(problems)`` is the ``--solutions=canonical`` sanity input (must score 100%).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterator, Mapping, Sequence

from proxy_jax.codeeval import jsonl, passk, problems as problems_lib, sandbox

_DETAIL_CHARS = 300
_CANONICAL_TIMEOUT_S = 120.0
_CANONICAL_OUTPUT_BYTES = 2 << 30  # expected outputs of big plus inputs (one MBPP+ call returns ~260 MB)
_CANONICAL_MEMORY_MB = 4096  # some MBPP+ references build large lists (evalplus allows 4 GB too)


def canonical_completions(problems: Sequence[problems_lib.Problem]) -> dict[str, list[str]]:
    """One completion per problem: its canonical solution."""
    return {p.task_id: [p.canonical_solution] for p in problems}


def _fingerprint(problem: problems_lib.Problem, completions: Sequence[str], base_only: bool) -> str:
    blob = json.dumps([problem.task_id, problem.prompt, list(completions), base_only])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _expected_outputs(todo: Sequence[problems_lib.Problem], base_only: bool, workers: int | None,
                      memory_mb: int, exchange: str) -> dict[str, tuple[str, str, list[float]]]:
    """task_id -> (inputs file, expected outputs file, per-input time limits) of every plus problem in
    ``todo``; the files live in the harness's directory ``exchange``."""
    plus = [p for p in todo if p.is_plus]
    files = {}
    for i, p in enumerate(plus):
        folder = os.path.join(exchange, str(i))
        os.mkdir(folder)
        files[p.task_id] = os.path.join(folder, "inputs.pkl"), folder
        problems_lib.write_inputs(p, files[p.task_id][0], base_only=base_only)
    jobs = ({"source": problems_lib.expected_program(p, files[p.task_id][0]), "keep": [problems_lib.EXPECTED_FILE],
             "keep_dir": files[p.task_id][1]} for p in plus)
    expected = {}
    for i, result in sandbox.iter_many(jobs, workers=workers, timeout_s=_CANONICAL_TIMEOUT_S,
                                       memory_mb=max(memory_mb, _CANONICAL_MEMORY_MB),
                                       max_output_bytes=_CANONICAL_OUTPUT_BYTES, share=[exchange]):
        p = plus[i]
        inputs_path, folder = files[p.task_id]
        expected_path = os.path.join(folder, problems_lib.EXPECTED_FILE)
        if not result.passed or not os.path.isfile(expected_path):
            raise RuntimeError(f"the canonical solution of {p.task_id} did not run ({result.status}: "
                               f"{result.detail[-300:]}); check the dataset file.")
        expected[p.task_id] = inputs_path, expected_path, problems_lib.time_limits(problems_lib.parse_times(result.output))
    return expected


def score(problems: Sequence[problems_lib.Problem], completions: Mapping[str, Sequence[str]], *,
          k: Sequence[int] = (1, 10, 100), workers: int | None = None, timeout_s: float = 10.0,
          memory_mb: int = 4096, out_path: str | None = None, base_only: bool = False) -> dict:
    """Run and score ``completions`` for ``problems``; see the module docstring."""
    for p in problems:
        if not completions.get(p.task_id):
            raise ValueError(f"no completions for {p.task_id}; give at least one per problem.")
    fingerprints = {p.task_id: _fingerprint(p, completions[p.task_id], base_only) for p in problems}
    finished = {tid: r for tid, r in jsonl.read(out_path, "task_id").items()
                if tid in fingerprints and r.get("fingerprint") == fingerprints[tid]}
    todo = [p for p in problems if p.task_id not in finished]
    exchange = tempfile.mkdtemp(prefix="codeeval-data-")
    try:
        new = _run(todo, completions, fingerprints, exchange, base_only=base_only, workers=workers,
                   timeout_s=timeout_s, memory_mb=memory_mb, out_path=out_path)
    finally:
        shutil.rmtree(exchange, ignore_errors=True)
    per_problem = {p.task_id: new.get(p.task_id) or finished[p.task_id] for p in problems}
    n_P = [r["n"] for r in per_problem.values()]
    c_P = [r["c"] for r in per_problem.values()]
    pass_k = {f"pass@{kk}": passk.mean_pass_at_k(n_P, c_P, kk) for kk in k if n_P and kk <= min(n_P)}
    return {"pass@k": pass_k, "per_problem": per_problem, "n_problems": len(per_problem),
            "resumed": len(problems) - len(todo)}


def _run(todo, completions, fingerprints, exchange, *, base_only, workers, timeout_s, memory_mb, out_path) -> dict:
    """Runs every completion of the problems in ``todo``; returns (and appends to ``out_path``) one
    record per problem."""
    expected = _expected_outputs(todo, base_only, workers, memory_mb, exchange)

    def programs() -> Iterator[str | dict]:
        for p in todo:
            for c in completions[p.task_id]:
                if p.is_plus:
                    inputs_path, expected_path, limits = expected[p.task_id]
                    yield {"source": problems_lib.plus_program(p, c, inputs_path, expected_path, limits,
                                                               base_only=base_only),
                           "timeout_s": problems_lib.plus_timeout_s(p, limits, base_only=base_only)}
                else:
                    yield problems_lib.test_program(p, c)

    owner = [(p, j) for p in todo for j in range(len(completions[p.task_id]))]
    results: dict[str, list] = {p.task_id: [None] * len(completions[p.task_id]) for p in todo}
    left = {p.task_id: len(completions[p.task_id]) for p in todo}
    new: dict[str, dict] = {}
    out = jsonl.appender(out_path)
    try:
        for i, result in sandbox.iter_many(programs(), workers=workers, timeout_s=timeout_s, memory_mb=memory_mb,
                                           share=[exchange]):  # the plus inputs and expected outputs
            p, j = owner[i]
            results[p.task_id][j] = result
            left[p.task_id] -= 1
            if left[p.task_id] == 0:
                rs = results.pop(p.task_id)
                record = {"task_id": p.task_id, "fingerprint": fingerprints[p.task_id], "n": len(rs),
                          "c": sum(r.passed for r in rs), "status": [r.status for r in rs],
                          "detail": [r.detail[-_DETAIL_CHARS:] for r in rs]}
                new[p.task_id] = record
                if out is not None:
                    out.write(json.dumps(record) + "\n")
                    out.flush()
    finally:
        if out is not None:
            out.close()
    return new
