"""The lm-evaluation-harness backend (``--model proxy_jax``) gives the library's own numbers.

A tiny byte run is trained once (40 steps, enough for its predictions to depend on context, so that
windows matter); tasks and their data are written by the tests (no hub, no network: every lm-eval call
runs with socket connections refused). Checked: lm-eval's ``bits_per_byte`` and every document's
log-likelihood equal ``evaluation.score.evaluate_workdir`` of the same text with the same windows;
``loglikelihood`` against a plain forward pass written here and the chain rule; greedy
``generate_until`` against the library's generation, prompt by prompt; the command line.
"""

import json
import math
import os
import socket
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Offline before `datasets` is first imported (it reads these once).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf_datasets_"))

import helpers  # noqa: E402
from proxy_jax import recipes, train, vocab  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = {
    "train.steps": 40, "train.checkpoint_every": 40, "train.log_every": 10, "train.eval_every": 0,
    "train.tensorboard": False, "train.sample_prompt": "", "data.seq_len": 64, "data.batch_size": 4,
    "data.source": "dir", "data.val_fraction": 0.2, "model.num_layers": 1, "model.d_model": 64,
    "model.num_heads": 2, "model.num_kv_heads": 2, "model.head_dim": 32, "model.d_ff": 128,
    "opt.warmup_steps": 4, "opt.lr": 3e-3,
}
# Relative tolerance between lm-eval's and the library's sums of the same per-token log-probabilities: the
# library adds a batch's float32 values on the device, the backend adds a document's in float64 on the host.
REL_TOL = 2e-6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for path in helpers.stdlib_paths(40):
        (root / path.name).write_bytes(path.read_bytes()[:3000])
    return str(root)


def _train(tmp_path_factory, corpus, spec, name, **overrides):
    workdir = str(tmp_path_factory.mktemp(name))
    config = recipes.load_config(os.path.join(ROOT, spec), **{**TRAIN, "data.path": corpus, **overrides})
    train.train(config, workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def bytes_run(tmp_path_factory, corpus):
    return _train(tmp_path_factory, corpus, "configs/bytes.py:tiny", "bytes")


def documents():
    """Held-out-like texts: code of several lengths (one spans many windows) and non-ASCII prose."""
    code = [p.read_text(encoding="utf-8") for p in helpers.stdlib_paths(60)[45:48]]
    return [code[0][:1500], code[1][:300], code[2][:90],
            "Café ☕ naïve façade — 日本語のテキスト, emoji 🙂 and tabs\tand\nnewlines.\n"]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_task(folder, name, data, **spec):
    """A task file lm-eval reads with ``include_path`` (JSON is YAML), over the local JSON lines ``data``."""
    task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}},
            "test_split": "test", **spec}
    (folder / f"{name}.yaml").write_text(json.dumps(task, indent=1), encoding="utf-8")


def perplexity_task(folder, name, texts):
    data = write_jsonl(folder / f"{name}.jsonl", [{"text": t} for t in texts])
    write_task(folder, name, data, output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="text",
               metric_list=[{"metric": "bits_per_byte"}, {"metric": "byte_perplexity"}])


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails: lm-eval must not reach the network for a local task."""
    def refuse(*args, **kwargs):
        raise OSError("network access during an offline test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def lm_eval_run(task_dir, tasks, model_args):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from proxy_jax.evaluation import lm_eval_backend  # noqa: F401 - registers "proxy_jax"

    return lm_eval.simple_evaluate(model="proxy_jax", model_args=model_args, tasks=tasks,
                                   task_manager=TaskManager(include_path=str(task_dir)), log_samples=True)


def library_nll(workdir, tmp_path, text, window):
    """Nats of ``text`` as ``python -m proxy_jax.evaluate --data=FILE --window=W`` scores it."""
    from proxy_jax.evaluation import score

    path = write_jsonl(tmp_path / "one.jsonl", [{"text": text}])
    out = score.evaluate_workdir(workdir, data=path, window=window)
    assert out["raw_bytes"] == len(text.encode("utf-8"))
    return out["raw_bpb"] * math.log(2) * out["raw_bytes"]


def test_bits_per_byte_equals_evaluate(bytes_run, tmp_path, no_network):
    texts, window = documents(), 16
    perplexity_task(tmp_path, "local_ppl", texts)
    out = lm_eval_run(tmp_path, ["local_ppl"], f"workdir={bytes_run},window={window},batch_size=3")
    samples = {s["doc"]["text"]: -s["resps"][0][0] for s in out["samples"]["local_ppl"]}
    reference = {t: library_nll(bytes_run, tmp_path, t, window) for t in texts}
    for t in texts:  # document by document, the same windows give the same nats
        assert samples[t] == pytest.approx(reference[t], rel=REL_TOL)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    expected = sum(reference.values()) / (math.log(2) * n_bytes)
    assert out["results"]["local_ppl"]["bits_per_byte,none"] == pytest.approx(expected, rel=REL_TOL)
    # The tolerance is far below what a change of windows moves: the comparison can see a window mismatch.
    other = library_nll(bytes_run, tmp_path, texts[0], 24)
    assert abs(other - reference[texts[0]]) > 50 * REL_TOL * reference[texts[0]]
