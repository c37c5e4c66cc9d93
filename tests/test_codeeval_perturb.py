"""Perturbations: deterministic per seed, they change the prompt, and canonical solutions still pass."""

import ast

import pytest

from proxy_jax.codeeval import harness, perturb, problems

HE = problems.load_humaneval()


@pytest.mark.parametrize("kind", perturb.KINDS)
def test_deterministic_valid_and_changing(kind):
    out, changed = perturb.perturb_all(HE, kind, seed=7)
    assert out == perturb.perturb_all(HE, kind, seed=7)[0]
    assert changed >= 160  # the few left alone have no prose line / no renamable parameter
    other = perturb.perturb_all(HE, kind, seed=8)[0]
    assert sum(a.prompt != b.prompt for a, b in zip(out, other)) > 40  # the seed matters
    for before, after in zip(HE, out):
        ast.parse(after.prompt + after.canonical_solution)
        assert after.task_id == before.task_id
        if kind in ("whitespace", "typo"):  # only the docstring text moves
            assert after.canonical_solution == before.canonical_solution and after.test == before.test


def test_each_kind_changes_what_it_says():
    p = HE[0]  # has_close_elements(numbers, threshold)
    ws = perturb.perturb(p, "whitespace", 0).prompt
    assert ws != p.prompt and ws.split() == p.prompt.split()
    typo = perturb.perturb(p, "typo", 0).prompt
    assert typo != p.prompt and len(typo.split()) == len(p.prompt.split())
    assert typo.split("def ")[1].split(":")[0] == p.prompt.split("def ")[1].split(":")[0]  # signature intact
    var = perturb.perturb(p, "varname", 0)
    renamed = {a.arg for a in ast.parse(var.prompt + var.canonical_solution).body[1].args.args}
    assert renamed != {"numbers", "threshold"} and len(renamed & {"numbers", "threshold"}) == 1
    fn = perturb.perturb(p, "funcname", 0)
    assert fn.entry_point != p.entry_point and fn.entry_point.lower().replace("_", "") == "hascloseelements"
    assert f"def {fn.entry_point}(" in fn.prompt and f">>> {fn.entry_point}(" in fn.prompt
    assert fn.test.rstrip().endswith(f"check({fn.entry_point})") and p.entry_point not in fn.prompt


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="'shuffle'"):
        perturb.perturb(HE[0], "shuffle", 0)


def test_canonical_still_passes_on_renamed_subset():
    subset = HE[3::12]
    for kind in ("varname", "funcname"):
        out, _ = perturb.perturb_all(subset, kind, seed=3)
        assert harness.score(out, harness.canonical_completions(out), k=(1,), workers=2)["pass@k"]["pass@1"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", perturb.KINDS)
def test_canonical_passes_on_every_perturbed_humaneval(kind):
    out, _ = perturb.perturb_all(HE, kind, seed=0)
    result = harness.score(out, harness.canonical_completions(out), k=(1,), workers=2)
    assert sum(r["c"] for r in result["per_problem"].values()) == 164
