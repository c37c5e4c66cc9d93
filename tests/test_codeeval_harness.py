"""Scoring: resume runs only unfinished problems (sandbox launches counted), stale lines are ignored."""

import json

from proxy_jax.codeeval import harness, problems, sandbox

HE = problems.load_humaneval()[:6]


def counting(monkeypatch):
    launches = []
    real = sandbox.run_program

    def run_program(source, **kwargs):
        launches.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(sandbox, "run_program", run_program)
    return launches


def test_interrupted_run_resumes_without_rerunning(tmp_path, monkeypatch):
    launches = counting(monkeypatch)
    out = str(tmp_path / "results.jsonl")
    completions = harness.canonical_completions(HE)
    completions["HumanEval/1"] = ["    return None\n", completions["HumanEval/1"][0]]
    first = harness.score(HE[:2], completions, k=(1,), workers=2, out_path=out)  # the "interrupted" run
    assert len(launches) == 3 and first["resumed"] == 0
    with open(out, "a") as f:
        f.write('{"task_id": "HumanEval/3", "fing')  # a line cut short by the interruption
    full = harness.score(HE, completions, k=(1, 2), workers=2, out_path=out)
    assert len(launches) == 3 + 4 and full["resumed"] == 2
    assert full["per_problem"]["HumanEval/1"]["c"] == 1 and full["per_problem"]["HumanEval/1"]["n"] == 2
    assert full["pass@k"] == {"pass@1": (5 + 0.5) / 6}  # pass@2 needs n >= 2 everywhere
    again = harness.score(HE, completions, k=(1,), workers=2, out_path=out)
    assert len(launches) == 7 and again["pass@k"] == full["pass@k"] and again["resumed"] == 6
    finished = [json.loads(line)["task_id"] for line in open(out) if line.endswith("}\n")]
    assert sorted(finished) == sorted(p.task_id for p in HE)


def test_changed_completions_are_rerun(tmp_path, monkeypatch):
    launches = counting(monkeypatch)
    out = str(tmp_path / "results.jsonl")
    completions = harness.canonical_completions(HE[:3])
    harness.score(HE[:3], completions, k=(1,), workers=2, out_path=out)
    completions["HumanEval/2"] = ["    return 0.0\n"]
    result = harness.score(HE[:3], completions, k=(1,), workers=2, out_path=out)
    assert len(launches) == 4 and result["per_problem"]["HumanEval/2"]["c"] == 0


def test_missing_completions_are_named():
    import pytest

    with pytest.raises(ValueError, match="HumanEval/0"):
        harness.score(HE[:1], {}, k=(1,))
