"""MBPP+/HumanEval+ beyond JSON: typed inputs restored, special oracles, per-input time limits."""

import json
import math
import random
import re

import pytest

from proxy_jax.codeeval import evalplus_format as ef
from proxy_jax.codeeval import harness, problems


# ------------------------------------------------------------------------------------- typed inputs
def _encode(x):
    """What the published file does to a typed value: JSON with tuples/sets as lists, complex as text."""
    def default(o):
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, complex):
            return str(o)
        raise TypeError(type(o))
    return json.loads(json.dumps(x, default=default))


def _same_typed(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_typed(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_typed(a[k], b[k]) for k in a)
    return a == b


def _ints(rng, lo=0, hi=4):
    return tuple(rng.randrange(-50, 50) for _ in range(rng.randint(lo, hi)))


# One typed argument list per conversion, in the shape the task's reference solution takes.
_SHAPES = {
    "_every_arg_tuple": lambda r: [_ints(r), _ints(r)],
    "_every_arg_list_of_tuples": lambda r: [[_ints(r, 1) for _ in range(r.randint(0, 3))], [_ints(r, 1)]],
    "_every_arg_tuple_of_tuples": lambda r: [tuple(_ints(r, 1) for _ in range(r.randint(1, 3))), (_ints(r, 1),)],
    "_first_arg_list_of_tuples": lambda r: [[_ints(r, 1) for _ in range(r.randint(1, 3))], r.randint(0, 9)],
    "_first_arg_tuple": lambda r: [_ints(r), r.randint(0, 9), "x"],
    "_second_arg_tuple": lambda r: [[r.randint(0, 9)], _ints(r)],
    "_first_arg_sets": lambda r: [[set(_ints(r, 1)), {}, set(_ints(r, 1))]],
    "_real_and_complex": lambda r: [r.random() * 10, complex(r.randint(-5, 5), r.randint(-5, 5))],
    "_first_arg_complex": lambda r: [complex(r.randint(-5, 5), r.randint(1, 5))],
    "_first_arg_tuple_of_mixed": lambda r: [(_ints(r, 1), r.randint(0, 9), _ints(r))],
    "_first_arg_dict_of_tuples": lambda r: [{"a": _ints(r), "b": _ints(r, 1)}, r.randint(0, 9)],
    "_all_tuples": lambda r: [(r.randint(0, 9), (_ints(r, 1), r.randint(0, 9))), _ints(r)],
}


@pytest.mark.parametrize("task", sorted(ef.MBPP_PLUS_CONVERSIONS))
def test_typed_inputs_survive_the_json_round_trip(task):
    shape = _SHAPES[ef.MBPP_PLUS_CONVERSIONS[task].__name__]
    rng = random.Random(task)
    typed = [shape(rng) for _ in range(20)]
    restored = ef.mbpp_plus_inputs(f"Mbpp/{task}", _encode(typed))
    assert all(_same_typed(a, b) for a, b in zip(restored, typed)) and len(restored) == len(typed)


def test_other_tasks_are_untouched_and_bad_shapes_are_named():
    inputs = [[[1, 2], 3]]
    assert ef.mbpp_plus_inputs("Mbpp/9", inputs) is inputs
    assert 59 not in ef.MBPP_PLUS_CONVERSIONS and len(ef.MBPP_PLUS_CONVERSIONS) == 62
    with pytest.raises(ValueError, match=r"Mbpp/124: input #1 .*shape"):
        ef.mbpp_plus_inputs("Mbpp/124", [[1.0, "1+2j"], [1.0, "not a complex"]])
    with pytest.raises(ValueError, match="task number"):
        ef.mbpp_plus_inputs("Mbpp/two", [])


# ----------------------------------------------------------------------------------------- oracles
def test_oracles_are_assigned_by_dataset_and_entry_point():
    assert ef.oracle("humaneval", "find_zero") == "find_zero" and ef.oracle("mbpp", "find_zero") == "equal"
    assert ef.oracle("mbpp", "Diff") == "set_equal" and ef.oracle("mbpp", "check_str") == "not_none"
    assert ef.oracle("mbpp", "sum_div") == "zero_or_equal" and ef.oracle("humaneval", "sum_div") == "equal"
    with pytest.raises(ValueError, match="dataset='apps'"):
        ef.oracle("apps", "f")
    with pytest.raises(ValueError, match="oracle='fuzzy'"):
        problems.Problem("T/1", "", "f", "", oracle="fuzzy")


def _pyramid(b, h):  # an independent statement of the Mbpp/581 alternative reading
    return round(b * b + 4 * (b * math.hypot(b / 2, h)) / 2)


def _digits(x, y):
    a, b = str(x), str(y)
    a, b = "0" * (len(b) - len(a)) + a, "0" * (len(a) - len(b)) + b
    return sum(abs(int(p) - int(q)) for p, q in zip(a, b))


@pytest.mark.parametrize(("oracle", "out", "exp", "args", "want"), [
    ("find_zero", 2.0, None, [[-6, 11, -6, 1]], True), ("find_zero", 2.5, None, [[-6, 11, -6, 1]], False),
    ("set_equal", [3, 1, 2], [1, 2, 3], [], True), ("set_equal", (1, 2), [1, 2, 4], [], False),
    ("set_equal", [[1]], [[1]], [], True),  # unhashable items: equality decides
    ("not_none", "a match", True, [], True), ("not_none", None, True, [], False),
    ("not_none", False, False, [], True), ("not_none", True, False, [], False), ("not_none", None, False, [], True),
    ("any_output", None, 7, [], True),
    ("zero_or_equal", 0, 12, [], True), ("zero_or_equal", 12, 12, [], True), ("zero_or_equal", 5, 12, [], False),
    ("zero_or_equal", False, 12, [], False),
    ("pyramid_area", _pyramid(3, 4), -1, [3, 4], True), ("pyramid_area", 99, 99, [3, 4], True),
    ("pyramid_area", 34, 99, [3, 4], _pyramid(3, 4) == 34),
    ("digit_distance", _digits(123, 25), -1, [123, 25], True), ("digit_distance", 5, 6, [123, 25], _digits(123, 25) == 5),
    ("equal", (1, 2), [1, 2], [], False), ("equal", 1.0 + 1e-7, 1.0, [], True),
])
def test_check_output(oracle, out, exp, args, want):
    assert problems.check_output(oracle, out, exp, args, 0.0) is want


# ------------------------------------------------------------------------------------------ MBPP+ run
def _record(task_id, entry, canonical, base, plus):
    return {"task_id": task_id, "prompt": f'"""\nTask {task_id}.\n"""\n', "entry_point": entry, "atol": 0,
            "canonical_solution": canonical, "base_input": base, "plus_input": plus, "assertion": ""}


def _mbpp_plus_file(tmp_path):
    records = [
        # Mbpp/720: the tuple must arrive as a tuple (concatenating a list with a tuple is a TypeError).
        _record("Mbpp/720", "add_dict_to_tuple",
                "def add_dict_to_tuple(t, d):\n    t = list(t)\n    t.append(d)\n    return tuple(t)\n",
                _encode([[(4, 5, 6), {"a": 1}]]), _encode([[(), {}], [(1,), {"b": 2}]])),
        # Mbpp/2 (similar_elements): any order of the shared elements.
        _record("Mbpp/2", "similar_elements",
                "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
                _encode([[(3, 4, 5, 6), (5, 7, 4, 10)]]), _encode([[(1, 2, 3, 9, 8), (9, 8, 7, 1)]])),
        # Mbpp/787 text_match_three: the reference returns match objects; only "not None" is compared.
        _record("Mbpp/787", "text_match_three",
                "import re\ndef text_match_three(s):\n    return re.search('ab{3}?', s)\n",
                [["ac"]], [["abbbba"], ["dc"], ["xabbb"]]),
    ]
    path = tmp_path / "MbppPlus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return problems.load_mbpp_plus(str(path))


def test_mbpp_plus_typed_inputs_and_oracles_end_to_end(tmp_path):
    ps = _mbpp_plus_file(tmp_path)
    assert [p.oracle for p in ps] == ["equal", "set_equal", "not_none"]
    assert ps[0].base_inputs == [[(4, 5, 6), {"a": 1}]] and isinstance(ps[0].plus_inputs[1][0], tuple)
    assert harness.score(ps, harness.canonical_completions(ps), k=(1,), workers=2)["pass@k"]["pass@1"] == 1.0
    candidates = {
        "Mbpp/720": ["def add_dict_to_tuple(t, d):\n    return t + (d,)\n",  # needs the tuple
                     "def add_dict_to_tuple(t, d):\n    return list(t) + [d]\n"],  # wrong type
        "Mbpp/2": ["def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n",
                   "def similar_elements(a, b):\n    return tuple(set(a) | set(b))\n"],
        "Mbpp/787": ["import re\ndef text_match_three(s):\n    return bool(re.search('abbb', s))\n",
                     "import re\ndef text_match_three(s):\n    return re.match('.*abbb', s)\n",
                     "def text_match_three(s):\n    return 'a' in s\n"],  # True for 'ac'
    }
    per = harness.score(ps, candidates, k=(1,), workers=2)["per_problem"]
    assert [r["status"] for r in (per["Mbpp/720"], per["Mbpp/2"])] == [["passed", "failed"], ["passed", "failed"]]
    assert per["Mbpp/787"]["status"] == ["passed", "passed", "failed"]


# --------------------------------------------------------------------------------------- time limits
def test_time_limit_arithmetic():
    assert problems.time_limits([0.001, 2.0]) == [problems.MIN_TIME_LIMIT_S, 8.0]
    p = problems.Problem("T/1", "", "f", "", base_inputs=[[1], [2]], plus_inputs=[[i] for i in range(30)])
    limits = problems.time_limits([0.0] * 32)
    assert problems.plus_timeout_s(p, limits) == 8.0 + problems.PLUS_TIMEOUT_CAP_S + 2.0
    assert problems.plus_timeout_s(p, limits, base_only=True) == 8.0 + 2.0
    with pytest.raises(ValueError, match="3 time limits for 32 inputs"):
        problems.plus_program(p, "", "in.pkl", "out.pkl", [1.0] * 3)


def test_a_slow_input_fails_under_its_own_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(problems, "MIN_TIME_LIMIT_S", 0.5)
    record = _record("Mbpp/9", "f", "def f(x):\n    return x * 2\n", [[1], [2]], [[3]])
    path = tmp_path / "MbppPlus.jsonl"
    path.write_text(json.dumps(record) + "\n")
    ps = problems.load_mbpp_plus(str(path))
    slow = "import time\ndef f(x):\n    if x == 2:\n        time.sleep(30)\n    return x * 2\n"
    result = harness.score(ps, {"Mbpp/9": [slow, "def f(x):\n    return x + x\n"]}, k=(1,), workers=2)
    r = result["per_problem"]["Mbpp/9"]
    assert r["status"] == ["failed", "passed"]
    assert re.search(r"input #1: no answer within its 0.5 s limit", r["detail"][0])
