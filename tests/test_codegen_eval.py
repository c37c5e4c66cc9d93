"""Code-generation evaluation of runs: the command end to end, resume, speculative decoding, the token
baseline, the oracle-translation metric and the robustness report.

Runs are trained for a few steps on a small folder of standard-library files (session fixtures in
``conftest.py``: ``bytes_run``, ``tokens_run``, ``proxy_tokens_run``); their
pass@1 is near 0, so tests check behaviour (numbers in range, files written, what is regenerated,
agreement between decoding paths), not quality. The canonical solutions give the known answers.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from proxy_jax import generate, recipes, text_format, vocab
from proxy_jax.codeeval import problems as problems_lib
from proxy_jax.evaluation import codegen, sampler as sampler_lib, translation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "proxy_jax.evaluate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- without a model ------------------------------------------------------------------------------

def test_canonical_humaneval_scores_one():
    result = codegen.evaluate_task("humaneval", solutions="canonical", limit=10, workers=2, progress=False)
    assert result["pass@k"] == {"pass@1": 1.0} and result["n_problems"] == 10


def test_robustness_of_canonical_solutions_drops_nothing(tmp_path):
    out = str(tmp_path / "rob.jsonl")
    result = codegen.evaluate_task("robustness", solutions="canonical", limit=6, workers=2, out=out, progress=False)
    assert result["nominal"]["pass@1"] == 1.0 and result["mean_drop"] == 0.0
    for kind, r in result["perturbed"].items():
        assert r["pass@1"] == 1.0 and r["drop"] == 0.0 and r["changed"] > 0, kind
        assert len(read_jsonl(codegen.sibling(out, kind))) == 6


@pytest.mark.parametrize("argv,needle", [
    (["--task=humaneva"], "--task='humaneva' is not a task; choose one of bpb, humaneval"),
    (["--task=mbpp_plus", "--solutions=canonical"], "MbppPlus.jsonl.gz; that file is published at https://"),
    (["--task=humaneval"], "needs --workdir=DIR"),
])
def test_cli_errors_are_one_sentence(argv, needle):
    out = run_cli(*argv)
    assert out.returncode != 0 and needle in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_generation_store_resumes_after_a_cut_line(tmp_path):
    store = str(tmp_path / "c.jsonl")
    calls = []

    def rows(numbers, prompts):
        calls.extend(prompts)
        return [p.upper() + str(n % 7) for n, p in zip(numbers, prompts)]

    items = [(f"t{i}", f"p{i}") for i in range(5)]
    first, made = codegen.cached_generate(items[:3], 2, rows, store=store, settings={"a": 1}, batch_size=4,
                                          progress=False)
    assert made == 3 and len(calls) == 6
    with open(store, "a", encoding="utf-8") as f:
        f.write('{"id": "t3", "key"')  # an interrupted write
    calls.clear()
    again, made = codegen.cached_generate(items, 2, rows, store=store, settings={"a": 1}, batch_size=3,
                                          progress=False)
    assert made == 2 and sorted(calls) == ["p3", "p3", "p4", "p4"]
    assert {k: again[k] for k in first} == first
    calls.clear()
    _, made = codegen.cached_generate(items[:1], 2, rows, store=store, settings={"a": 2}, batch_size=3,
                                      progress=False)
    assert made == 1 and calls == ["p0", "p0"]  # other settings: a fresh generation


def naive_edit_distance(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_edit_distance_matches_the_textbook_table():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 4, rng.integers(0, 12)).tolist()
        b = rng.integers(0, 4, rng.integers(0, 12)).tolist()
        assert translation.edit_distance(a, b) == naive_edit_distance(a, b)
        assert 0.0 <= translation.normalised_edit_distance(a, b) <= 1.0
    assert translation.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert translation.normalised_edit_distance([], []) == 0.0


def test_oracle_that_writes_f_of_x_scores_exact_match_one():
    """The metric with an oracle: the "model" reads x back out of ``1 12 x 13 14`` and writes f(x)."""
    def f(x: bytes) -> np.ndarray:  # a toy proxy: byte pairs -> one symbol
        x = x + b"\0" * (len(x) % 2)
        return vocab.encode_comp(np.frombuffer(x, np.uint8).reshape(-1, 2) @ np.array([256, 1]))

    def oracle(prompts):
        return [f(vocab.decode_raw(p[2:-2])) for p in prompts]

    snippets = [d[:256] for d in helpers.stdlib_docs(8)]
    assert translation.probe(oracle, f, snippets)["exact_match"] == 1.0
    assert translation.probe(oracle, f, snippets)["edit_distance"] == 0.0
    off_by_one = translation.probe(lambda ps: [y[1:] for y in oracle(ps)], f, snippets)
    assert off_by_one["exact_match"] == 0.0
    expected = np.mean([1 / len(f(x)) for x in snippets])  # one deletion each
    assert off_by_one["edit_distance"] == pytest.approx(expected)


def test_text_format_follows_the_mix():
    formats = {spec: text_format.of_mix(recipes.load_config(os.path.join(ROOT, f"configs/{spec}.py:tiny")).mix).name
               for spec in ("bytes", "tokens", "proxy_tokens", "proxy_gzip")}
    assert formats == {"bytes": "plain", "tokens": "compressed", "proxy_tokens": "sentinel", "proxy_gzip": "sentinel"}


# ---- with trained runs ----------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_humaneval_end_to_end(bytes_run, tmp_path):
    out = str(tmp_path / "he.jsonl")
    proc = run_cli(f"--workdir={bytes_run}", "--task=humaneval", "--limit=3", "--max_new_bytes=32",
                   f"--out={out}", "--workers=2", "--batch_size=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert 0.0 <= result["pass@k"]["pass@1"] <= 1.0 and result["n_problems"] == 3
    assert result["text_format"] == "plain" and result["generated"] == 3
    # Records are appended as the parallel sandboxes finish: the set of problems is fixed, not their order.
    assert sorted(r["task_id"] for r in read_jsonl(out)) == [f"HumanEval/{i}" for i in range(3)]
    completions = read_jsonl(codegen.sibling(out, "completions"))
    assert len(completions) == 3 and all(len(r["outputs"]) == 1 for r in completions)


@pytest.mark.slow
def test_interrupted_run_generates_only_new_problems(bytes_run, tmp_path, monkeypatch):
    prompts = []
    complete = sampler_lib.Sampler.complete

    def counting(self, batch, **kw):
        prompts.extend(batch)
        return complete(self, batch, **kw)

    monkeypatch.setattr(sampler_lib.Sampler, "complete", counting)
    out = str(tmp_path / "he.jsonl")
    kw = dict(workdir=bytes_run, max_new_bytes=32, out=out, workers=2, progress=False)
    first = codegen.evaluate_task("humaneval", limit=2, **kw)
    assert len(prompts) == 2 and first["generated"] == 2
    prompts.clear()
    second = codegen.evaluate_task("humaneval", limit=3, **kw)
    he = problems_lib.load_humaneval()
    assert prompts == [he[2].prompt.encode()] and second["generated"] == 1 and second["resumed"] == 2
    assert len(read_jsonl(out)) == 3


@pytest.mark.slow
def test_speculative_completions_equal_plain_greedy(bytes_run, tmp_path):
    kw = dict(workdir=bytes_run, limit=3, max_new_bytes=32, workers=2, progress=False, batch_size=3)
    plain = codegen.evaluate_task("humaneval", out=str(tmp_path / "plain.jsonl"), **kw)
    spec = codegen.evaluate_task("humaneval", out=str(tmp_path / "spec.jsonl"), speculative=True, **kw)
    assert spec["speculative"]["bytes_per_pass"] >= 1.0
    assert plain["pass@k"] == spec["pass@k"]
    plain_c = read_jsonl(codegen.sibling(str(tmp_path / "plain.jsonl"), "completions"))
    spec_c = read_jsonl(codegen.sibling(str(tmp_path / "spec.jsonl"), "completions"))
    assert [r["outputs"] for r in plain_c] == [r["outputs"] for r in spec_c]
    with pytest.raises(ValueError, match="--speculative decodes greedily"):
        codegen.evaluate_task("humaneval", speculative=True, temperature=0.8, **kw)


@pytest.mark.slow
def test_byte_run_refuses_oracle_translation(bytes_run):
    with pytest.raises(ValueError, match="is a byte-only run"):
        codegen.evaluate_task("oracle_translation", workdir=bytes_run, limit=2, progress=False)


@pytest.mark.slow
def test_token_baseline_generates_token_ids_and_decodes_them(tokens_run):
    s = sampler_lib.load(tokens_run)
    assert s.fmt.name == "compressed"
    proxy = s.get_proxy()
    prompts = [b"def add(a, b):\n    return", b"import os\n"]
    args = s.run.model.args
    allowed = np.zeros(args.padded_vocab_size, bool)
    allowed[vocab.COMP_OFFSET : s.run.vocab_size] = True
    allowed[vocab.EOS] = True
    ids = [np.concatenate([[vocab.BOS], proxy.encode(p)]) for p in prompts]
    new = generate.generate_ids(s.run.model, s.run.params, ids, max_new_ids=8, allowed_V=allowed,
                                stop_ids=(vocab.EOS,))
    assert all(((x >= vocab.COMP_OFFSET) & (x < s.run.vocab_size)).all() for x in new)
    texts, _ = s.complete(prompts, max_new=8)
    assert texts == [proxy.decode(x) for x in new]
    assert all(isinstance(t, bytes) for t in texts) and any(texts)


@pytest.mark.slow
def test_oracle_translation_on_a_proxy_run(proxy_tokens_run, tmp_path):
    out = str(tmp_path / "oracle.jsonl")
    result = codegen.evaluate_task("oracle_translation", workdir=proxy_tokens_run, limit=3, max_new_bytes=24,
                                   out=out, progress=False)
    assert 0.0 <= result["exact_match"] <= 1.0 and 0.0 <= result["edit_distance"] <= 1.0
    assert result["snippets"] == len(read_jsonl(out)) >= 1
    for record in read_jsonl(out):
        ids = np.asarray(record["outputs"][0])
        assert (ids >= vocab.BYTE_OFFSET).all()  # raw bytes or compressed symbols, never a sentinel


def test_token_baseline_scores_bits_per_byte_of_its_text(tokens_run, bytes_run):
    """The tokenizer baseline is scored as it was trained (1 tokens 2), in bits per raw byte of the text."""
    from proxy_jax.evaluation import score

    from proxy_jax import assemble, restore

    tok, byt = score.evaluate_workdir(tokens_run), score.evaluate_workdir(bytes_run)
    run = restore.restore(tokens_run)
    docs = assemble.heldout_docs(run.config, 0)
    proxy = run.proxy
    # Every token of every held-out document is scored once, and divided by the documents' bytes.
    assert tok["symbols"] == sum(len(proxy.encode(d)) for d in docs) < tok["raw_bytes"]
    assert tok["raw_bytes"] == byt["raw_bytes"] == sum(len(d) for d in docs) > 0
    # 3 steps leave the model near uniform over its logical vocabulary for each token.
    uniform = math.log2(320 + 512) * tok["symbols"] / tok["raw_bytes"]
    assert 0.9 * uniform < tok["raw_bpb"] < 1.1 * uniform
