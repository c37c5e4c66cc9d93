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
from typing import Iterator, Mapping, Sequence

from proxy_jax.codeeval import jsonl, passk, problems as problems_lib, sandbox

_DETAIL_CHARS = 300
_CANONICAL_TIMEOUT_S = 60.0
_CANONICAL_OUTPUT_BYTES = 256 << 20  # expected outputs of big plus inputs; trusted code


def canonical_completions(problems: Sequence[problems_lib.Problem]) -> dict[str, list[str]]:
    """One completion per problem: its canonical solution."""
    return {p.task_id: [p.canonical_solution] for p in problems}


def _fingerprint(problem: problems_lib.Problem, completions: Sequence[str], base_only: bool) -> str:
    blob = json.dumps([problem.task_id, problem.prompt, list(completions), base_only])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _expected_outputs(todo: Sequence[problems_lib.Problem], base_only: bool, workers: int | None,
                      memory_mb: int) -> dict[str, tuple[str, list[float]]]:
    """task_id -> (encoded canonical outputs, per-input time limits) of every plus problem in ``todo``."""
    plus = [p for p in todo if p.is_plus]
    programs = (problems_lib.expected_program(p, base_only=base_only) for p in plus)
    expected = {}
    for i, result in sandbox.iter_many(programs, workers=workers, timeout_s=_CANONICAL_TIMEOUT_S,
                                       memory_mb=memory_mb, max_output_bytes=_CANONICAL_OUTPUT_BYTES):
        if not result.passed:
            raise RuntimeError(f"the canonical solution of {plus[i].task_id} did not run ({result.status}: "
                               f"{result.detail[-300:]}); check the dataset file.")
        blob, times = problems_lib.parse_expected(result.output)
        expected[plus[i].task_id] = blob, problems_lib.time_limits(times)
    return expected


def score(problems: Sequence[problems_lib.Problem], completions: Mapping[str, Sequence[str]], *,
          k: Sequence[int] = (1, 10, 100), workers: int | None = None, timeout_s: float = 10.0,
          memory_mb: int = 1024, out_path: str | None = None, base_only: bool = False) -> dict:
    """Run and score ``completions`` for ``problems``; see the module docstring."""
    for p in problems:
        if not completions.get(p.task_id):
            raise ValueError(f"no completions for {p.task_id}; give at least one per problem.")
    fingerprints = {p.task_id: _fingerprint(p, completions[p.task_id], base_only) for p in problems}
    finished = {tid: r for tid, r in jsonl.read(out_path, "task_id").items()
                if tid in fingerprints and r.get("fingerprint") == fingerprints[tid]}
    todo = [p for p in problems if p.task_id not in finished]
    expected = _expected_outputs(todo, base_only, workers, memory_mb)

    def programs() -> Iterator[str]:
        for p in todo:
            for c in completions[p.task_id]:
                if p.is_plus:
                    blob, limits = expected[p.task_id]
                    yield (problems_lib.plus_program(p, c, blob, limits, base_only=base_only),
                           problems_lib.plus_timeout_s(p, limits, base_only=base_only))
                else:
                    yield problems_lib.test_program(p, c)

    owner = [(p, j) for p in todo for j in range(len(completions[p.task_id]))]
    results: dict[str, list] = {p.task_id: [None] * len(completions[p.task_id]) for p in todo}
    left = {p.task_id: len(completions[p.task_id]) for p in todo}
    new: dict[str, dict] = {}
    out = jsonl.appender(out_path)
    try:
        for i, result in sandbox.iter_many(programs(), workers=workers, timeout_s=timeout_s, memory_mb=memory_mb):
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

    per_problem = {p.task_id: new.get(p.task_id) or finished[p.task_id] for p in problems}
    n_P = [r["n"] for r in per_problem.values()]
    c_P = [r["c"] for r in per_problem.values()]
    pass_k = {f"pass@{kk}": passk.mean_pass_at_k(n_P, c_P, kk) for kk in k if n_P and kk <= min(n_P)}
    return {"pass@k": pass_k, "per_problem": per_problem, "n_problems": len(per_problem),
            "resumed": len(problems) - len(todo)}
