"""Loaders on files written here, the plus check's tolerance, stop strings, and HumanEval end to end."""

import gzip
import json
import re

import pytest

from proxy_jax.codeeval import harness, problems

HE = problems.load_humaneval()


def test_humaneval_is_complete():
    assert len(HE) == 164 and HE[0].task_id == "HumanEval/0"
    assert all(p.test.rstrip().endswith(f"check({p.entry_point})") for p in HE)


def test_truncate_at_the_earliest_stop_string():
    body = "    return x\n"
    assert problems.truncate(body + "\ndef g():\n    pass\n") == body
    for stop in problems.STOP_STRINGS:
        assert problems.truncate(body + stop + " rest\nif x:") == body
    assert problems.truncate("    a = 1\n    if b:\n        c\n") == "    a = 1\n    if b:\n        c\n"  # indented
    assert problems.truncate("x\n#c\ndef f") == "x"
    assert problems.truncate("no stop here") == "no stop here"


@pytest.mark.parametrize(("out", "exp", "atol", "want"), [
    (1.0 + 4e-4, 1.0, 1e-3, True), (1.0 + 2e-3, 1.0, 1e-3, False),
    (1.0 + 5e-7, 1.0, 0.0, True), (1.0 + 5e-6, 1.0, 0.0, False),  # atol 0 -> 1e-6 for floats
    ([1.0, [2.0 + 1e-4]], [1.0, [2.0]], 1e-3, True), ([1.0, [2.0 + 1e-2]], [1.0, [2.0]], 1e-3, False),
    ((1.0, 2.0), [1.0, 2.0], 1e-3, False), ([1.0], [1.0, 2.0], 1e-3, False),
    (3, 3, 0.5, True), (4, 3, 0.5, False),  # exact for non-floats whatever atol
    ("a", "a", 0.0, True), ("a", "b", 0.5, False), (float("nan"), float("nan"), 0.0, True),
])
def test_outputs_match(out, exp, atol, want):
    assert problems.outputs_match(out, exp, atol) is want


def _plus_record(task, base, plus, atol=0.0, **extra):
    return {"task_id": task.task_id, "prompt": task.prompt, "entry_point": task.entry_point,
            "canonical_solution": task.canonical_solution, "base_input": base, "plus_input": plus,
            "atol": atol, "contract": "", **extra}


def _write_jsonl(path, records):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("name", ["HumanEvalPlus.jsonl", "HumanEvalPlus.jsonl.gz"])
def test_humaneval_plus_loader_and_check(tmp_path, name):
    path = tmp_path / name
    # HumanEval/2 truncate_number returns a float; HumanEval/4 mean_absolute_deviation too.
    _write_jsonl(path, [_plus_record(HE[2], [[3.5]], [[1.25], [7.75]], atol=1e-3, test=HE[2].test),
                        _plus_record(HE[4], [[[1.0, 2.0, 3.0, 4.0]]], [[[1.0, 1.0]]])])
    ps = problems.load_humaneval_plus(str(path))
    assert [p.task_id for p in ps] == ["HumanEval/2", "HumanEval/4"] and ps[0].atol == 1e-3
    assert ps[0].is_plus and ps[0].plus_inputs == [[1.25], [7.75]]
    assert "check(truncate_number)" in ps[0].test and ps[1].test == ""
    canonical = harness.score(ps, harness.canonical_completions(ps), k=(1,), workers=2)
    assert canonical["pass@k"]["pass@1"] == 1.0
    shift = lambda d: {"HumanEval/2": [f"    return number % 1.0 + {d}\n"],  # noqa: E731
                       "HumanEval/4": [HE[4].canonical_solution.replace("return ", f"return {d} + ")]}
    within = harness.score(ps, shift(5e-4), k=(1,), workers=2)["per_problem"]
    assert within["HumanEval/2"]["c"] == 1 and within["HumanEval/4"]["c"] == 0  # atol 0 -> 1e-6 there
    assert harness.score(ps, shift(2e-3), k=(1,), workers=2)["pass@k"]["pass@1"] == 0.0
    # Only the base inputs: a completion right on the base input but wrong on plus inputs passes.
    base_only = {"HumanEval/2": ["    return 0.5 if number == 3.5 else -1.0\n"], "HumanEval/4": ["    return 1.0\n"]}
    assert harness.score(ps, base_only, k=(1,), workers=2, base_only=True)["pass@k"]["pass@1"] == 1.0
    assert harness.score(ps, base_only, k=(1,), workers=2)["pass@k"]["pass@1"] == 0.0


def test_mbpp_plus_loader(tmp_path):
    prompt = '"""\nWrite a function to add two numbers.\nassert add_nums(1, 2) == 3\n"""\n'
    record = {"task_id": "Mbpp/9", "prompt": prompt, "entry_point": "add_nums", "atol": 0,
              "canonical_solution": "def add_nums(a, b):\n    return a + b\n", "base_input": [[1, 2]],
              "plus_input": [[10**20, -3], [0, 0]], "assertion": "assert add_nums(1, 2) == 3"}
    path = tmp_path / "MbppPlus.jsonl"
    _write_jsonl(path, [record])
    ps = problems.load_mbpp_plus(str(path), convert_inputs=lambda tid, inputs: [tuple(x) for x in inputs])  # a custom one
    assert ps[0].test == "assert add_nums(1, 2) == 3" and ps[0].plus_inputs == [(10**20, -3), (0, 0)]
    result = harness.score(ps, {"Mbpp/9": ["def add_nums(a, b):\n    return b + a\n",
                                           "def add_nums(a, b):\n    return a + b if a < 100 else 0\n"]}, k=(1, 2))
    assert result["per_problem"]["Mbpp/9"]["c"] == 1 and result["pass@k"] == {"pass@1": 0.5, "pass@2": 1.0}


def test_mbpp_sanitized_loader(tmp_path):
    records = [{"task_id": 2, "prompt": "Write a function to find the shared elements from the given two lists.",
                "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
                "test_imports": ["import math"],
                "test_list": ["assert set(similar_elements((3, 4, 5), (5, 7, 4))) == set((4, 5))",
                              "assert math.isfinite(len(similar_elements((1,), (2,))))"]}]
    path = tmp_path / "sanitized-mbpp.json"
    path.write_text(json.dumps(records))
    (p,) = problems.load_mbpp(str(path))
    assert p.task_id == "Mbpp/2" and p.entry_point == "similar_elements"
    assert p.prompt.startswith('"""\nWrite a function') and records[0]["test_list"][0] in p.prompt
    good = harness.score([p], harness.canonical_completions([p]), k=(1,))
    bad = harness.score([p], {"Mbpp/2": ["def similar_elements(a, b):\n    return ()\n"]}, k=(1,))
    assert good["pass@k"]["pass@1"] == 1.0 and bad["pass@k"]["pass@1"] == 0.0


@pytest.mark.parametrize("loader", [problems.load_humaneval_plus, problems.load_mbpp_plus, problems.load_mbpp])
def test_missing_file_names_it_and_its_source(tmp_path, loader):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=re.escape(missing) + ".*published at https://github.com/"):
        loader(missing)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "HumanEvalPlus.jsonl"
    _write_jsonl(path, [{"task_id": "HumanEval/0", "prompt": "def f():\n"}])
    with pytest.raises(ValueError, match="'entry_point'"):
        problems.load_humaneval_plus(str(path))


def test_canonical_subset_passes_and_wrong_solutions_score_zero():
    subset = HE[::8]  # 21 problems across the set
    assert harness.score(subset, harness.canonical_completions(subset), k=(1,), workers=2)["pass@k"]["pass@1"] == 1.0
    wrong = {p.task_id: ["    return None\n"] for p in subset}
    assert harness.score(subset, wrong, k=(1,), workers=2)["pass@k"]["pass@1"] == 0.0


@pytest.mark.slow
def test_all_164_canonical_solutions_pass():
    result = harness.score(HE, harness.canonical_completions(HE), k=(1,), workers=2)
    assert sum(r["c"] for r in result["per_problem"].values()) == 164
