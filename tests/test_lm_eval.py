"""The lm-evaluation-harness backend (``--model proxy_jax``) gives the library's own numbers.

A tiny byte run is trained once per session (40 steps, enough for its predictions to depend on context, so
that windows matter); the proxy and tokenizer runs are conftest's. Tasks and their data are written by the
tests (no hub, no network: every lm-eval call runs with socket connections refused). Checked: lm-eval's
``bits_per_byte`` and every document's log-likelihood equal ``evaluation.score.evaluate_workdir`` of the same
text with the same windows; ``loglikelihood`` against a plain forward pass written here and the chain rule;
greedy ``generate_until`` against the library's generation, prompt by prompt; the command line. The same runs
exported (``proxy_jax.export``) and scored by lm-eval's own Hugging Face backend (``--model hf``): the ids
it reads and scores, and its bits per byte beside the library's.
"""

import json
import math
import os
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
from proxy_jax import recipes, text_format, train, vocab  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = {
    "train.steps": 40, "train.checkpoint_every": 40, "train.log_every": 10, "train.eval_every": 0,
    "train.tensorboard": False, "train.sample_prompt": "", "data.seq_len": 64, "data.batch_size": 4,
    "data.source": "dir", "data.val_fraction": 0.2, "model.num_layers": 1, "model.d_model": 64,
    "model.num_heads": 2, "model.num_kv_heads": 2, "model.head_dim": 32, "model.d_ff": 128,
    "opt.warmup_steps": 4, "opt.lr": 3e-3,
}
# Relative tolerance between lm-eval's and the library's sums of the same per-token log-probabilities: the
# library adds a batch's float32 values on the device, the backend adds a document's in float64 on the host
# (measured: at most 1.5e-7 on the byte run). A change of windows moves a document's nats far more (checked).
REL_TOL = 2e-6


@pytest.fixture(scope="module")
def bytes_run(corpus):
    """This module's byte run (40 steps on conftest's corpus, trained once per session): unlike conftest's
    3-step ``bytes_run`` its predictions depend on the context, so a change of windows shows."""
    def build(workdir):
        config = recipes.load_config(os.path.join(ROOT, "configs/bytes.py:tiny"), **{**TRAIN, "data.path": corpus})
        train.train(config, workdir, progress=False)

    return helpers.shared_folder("test_lm_eval/bytes", build)


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


def lm_eval_run(task_dir, tasks, model_args="", model="proxy_jax"):
    """lm-eval's ``simple_evaluate``: ``model`` by its registered name with ``model_args``, or an instance."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from proxy_jax.evaluation import lm_eval_backend  # noqa: F401 - registers "proxy_jax"

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
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


@pytest.fixture(scope="module")
def backend(bytes_run):
    from proxy_jax.evaluation import lm_eval_backend

    return lm_eval_backend.ProxyJaxLM(workdir=bytes_run, batch_size=4, max_length=48)


def requests(kind, arguments):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(arguments)]


def naive_loglikelihood(lm, context: str, continuation: str) -> tuple[float, bool]:
    """One unpadded forward pass over ``1 context continuation`` (the byte baseline's prompt), cut to its
    last ``max_length + 1`` ids as the backend documents; float64 log-softmax over the logical vocabulary."""
    import flax.linen as nn

    from proxy_jax import sharding

    run = lm.run
    tail = vocab.encode_raw(continuation.encode("utf-8"))
    ids = np.concatenate([[vocab.BOS], vocab.encode_raw(context.encode("utf-8")), tail]).astype(np.int32)
    positions = np.arange(ids.size, dtype=np.int32)
    ids, positions = ids[-(lm.max_length + 1):], positions[-(lm.max_length + 1):]
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.logical_rules(run.config)):
        # Jitted: one compilation per length instead of one per operation and length.
        logits, _ = jax.jit(run.model.apply)({"params": run.params}, ids[None, :-1],
                                             np.ones((1, ids.size - 1), np.int32), positions[None, :-1])
    logits = np.asarray(logits[0, :, 0], np.float64)
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits[:, : run.vocab_size]), axis=-1))
    at = np.arange(ids.size - 1 - tail.size, ids.size - 1)
    allowed = text_format.get(run.text_format).allowed_mask(logits.shape[-1], run.vocab_size)
    greedy = np.argmax(np.where(allowed, logits, -np.inf), axis=-1)
    return float(logp[at, ids[at + 1]].sum()), bool(np.all(greedy[at] == ids[at + 1]))


PAIRS = [("", "import os\n"), ("def main():\n    ", "return 0"), ("x = 'Café ☕", " naïve'"),
         ("# " + "a long comment that does not fit the window " * 3, "\nclass A:"), ("for i in range(3", ")")]


def test_loglikelihood_equals_a_plain_forward_pass(backend):
    got = backend.loglikelihood(requests("loglikelihood", PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        want, want_greedy = naive_loglikelihood(backend, context, continuation)
        assert logprob == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert greedy == want_greedy


def test_chain_rule_rolling_and_greedy(backend):
    a, b = "import sys\n", "def f(x):\n    return x\n"
    (whole, _), (head, _), (rest, _) = backend.loglikelihood(requests("loglikelihood", [("", a + b), ("", a), (a, b)]))
    assert whole == pytest.approx(head + rest, rel=1e-5)  # log p(ab) = log p(a) + log p(b | a), byte by byte
    # The whole text in one window: its rolling log-likelihood is that of the text after BOS.
    (rolling,) = backend.loglikelihood_rolling(requests("loglikelihood_rolling", [(a + b,)]))
    assert rolling == pytest.approx(whole, rel=1e-5)
    # What greedy generation writes is greedy; one byte changed at its end is not.
    (written,) = backend.generate_until(requests("generate_until", [(a, {"until": [], "max_gen_toks": 8})]))
    assert len(written.encode("utf-8")) == 8
    (_, yes), (_, no) = backend.loglikelihood(requests("loglikelihood", [(a, written),
                                                                         (a, written[:-1] + chr(ord(written[-1]) ^ 1))]))
    assert yes and not no


def test_generate_until_equals_library_generation(backend, tmp_path, no_network):
    from proxy_jax.evaluation import sampler as sampler_lib

    # Two lengths in bytes (so one batch is left padded) and few shapes to compile for the reference.
    prompts = ["def add(a, b):\n", "import os, sys\n", "s = 'Grüß世'", "class A("]
    assert len({len(p.encode("utf-8")) for p in prompts[:3]}) == 1
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "answer": ""} for p in prompts])
    write_task(tmp_path, "local_gen", data, output_type="generate_until", doc_to_text="prompt",
               doc_to_target="answer", generation_kwargs={"until": ["\n\n", "):"], "max_gen_toks": 24,
                                                          "do_sample": False},
               metric_list=[{"metric": "exact_match"}])
    out = lm_eval_run(tmp_path, ["local_gen"], model=backend)
    got = {s["arguments"][0][0]: s["resps"][0][0] for s in out["samples"]["local_gen"]}
    assert sorted(got) == sorted(prompts)  # lm-eval hands each prompt over as written
    sampler = sampler_lib.Sampler(backend.run, text_format.get(backend.run.text_format))
    for p in prompts:  # each prompt alone: rows of a batch do not affect each other
        [want], _ = sampler.complete([p.encode("utf-8")], max_new=24, stop=[b"\n\n", b"):"])
        assert got[p] == want.decode("utf-8", errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["configs/proxy_tokens.py:tiny", "configs/tokens.py:tiny"])
def test_proxy_and_tokenizer_runs(spec, request, tmp_path, no_network):
    """A proxy run (``1 12 bytes 13 2``) and the tokenizer baseline (``1 tokens 2``, its symbols scored per
    byte of text): the same agreement with evaluate and with the library's generation (conftest's runs)."""
    from proxy_jax.evaluation import sampler as sampler_lib

    workdir = request.getfixturevalue("proxy_tokens_run" if spec.startswith("configs/proxy_tokens") else "tokens_run")
    texts, window, prompts = documents(), 16, ["def add(a, b):\n", "class A("]
    perplexity_task(tmp_path, "local_ppl", texts)
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "answer": ""} for p in prompts])
    write_task(tmp_path, "local_gen", data, output_type="generate_until", doc_to_text="prompt",
               doc_to_target="answer", generation_kwargs={"until": ["\n\n"], "max_gen_toks": 12},
               metric_list=[{"metric": "exact_match"}])
    out = lm_eval_run(tmp_path, ["local_ppl", "local_gen"], f"workdir={workdir},window={window},batch_size=2")
    samples = {s["doc"]["text"]: -s["resps"][0][0] for s in out["samples"]["local_ppl"]}
    for t in texts:
        assert samples[t] == pytest.approx(library_nll(workdir, tmp_path, t, window), rel=REL_TOL)
    got = {s["arguments"][0][0]: s["resps"][0][0] for s in out["samples"]["local_gen"]}
    sampler = sampler_lib.load(workdir)
    for p in prompts:
        [want], _ = sampler.complete([p.encode("utf-8")], max_new=12, stop=[b"\n\n"])
        assert got[p] == want.decode("utf-8", errors="replace")


def run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "proxy_jax.lm_eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_command_line(bytes_run, backend, tmp_path):
    """``python -m proxy_jax.lm_eval`` is lm-eval's command with the model registered; errors are one line."""
    texts = documents()
    perplexity_task(tmp_path, "local_ppl", texts)
    # The backend's settings, batch size included: the command then runs the executables it compiled.
    model_args = f"workdir={bytes_run},max_length={backend.max_length},batch_size={backend.batch_size}"
    proc = run_cli("--model", "proxy_jax", "--model_args", model_args, "--tasks", "local_ppl",
                   "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "out") for f in fs if f.startswith("results")]
    with open(path, encoding="utf-8") as f:
        cli = json.load(f)["results"]["local_ppl"]["bits_per_byte,none"]
    logliks = backend.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]))
    expected = -sum(logliks) / (math.log(2) * sum(len(t.encode("utf-8")) for t in texts))
    assert cli == pytest.approx(expected, rel=1e-9)  # the same backend settings, the same float64 sums
    proc = run_cli("--model", "proxy_jax", "--model_args", "window=16", "--tasks", "local_ppl",
                   "--include_path", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: --model proxy_jax needs --model_args workdir=DIR (a "
                                                    "training workdir).")


def test_model_arguments_are_checked_before_restoring(tmp_path):
    from proxy_jax.evaluation import lm_eval_backend

    lm = lm_eval_backend.ProxyJaxLM
    with pytest.raises(ValueError, match=r"--model_args window=-3 must be a whole number >= 1 \(0: the default\)"):
        lm(workdir=str(tmp_path), window=-3)
    with pytest.raises(ValueError, match="--model_args windw not understood by proxy_jax"):
        lm.create_from_arg_string(f"workdir={tmp_path},windw=3")
    # --model_args win over the CLI's --batch_size, which lm-eval always passes.
    with pytest.raises(ValueError, match=r"batch_size=0 must be a whole number >= 1 \(or auto\)"):
        lm.create_from_arg_string(f"workdir={tmp_path},batch_size=0", {"batch_size": "4", "device": "cuda:0"})


# ---- the exported model through lm-eval's Hugging Face backend (--model hf) ----------------------------
# The backend reads a perplexity document as lm-eval 0.4.13's HFLM.loglikelihood_rolling does:
# ``[prefix_token_id] + tok_encode(text)`` cut by ``utils.get_rolling_token_windows`` into windows of
# ``max_length`` predictions (``max_position_embeddings`` of the export: the trained context), every id of
# ``tok_encode(text)`` scored. ``prefix_token_id`` is the tokenizer's ``<bos>``; ``tok_encode`` calls the
# tokenizer with its own special tokens unless ``add_bos_token`` is given (then with none).
# Bits per byte of lm-eval's hf backend and of the library differ by at most 0.002 (the agreement asked of
# an export): float32 logits in torch and in JAX are summed in different orders (measured on the byte run:
# 1.3e-7 bits per byte, at most 1.2e-7 of a document's nats), while reading a document differently moves
# far more (a second <bos>, lm-eval's default: +0.095 bits per byte on the same run).
HF_BPB_TOL = 0.002
HF_DOC_REL = 1e-5


def hf_lm(out, model_args=""):
    """lm-eval's ``hf`` model as ``lm_eval --model hf --model_args pretrained=OUT{model_args} --device cpu``
    builds it (the export is float32: lm-eval's default ``dtype=auto`` keeps it)."""
    pytest.importorskip("accelerate")  # lm-eval's hf backend imports it (the [export] extra installs it)
    from lm_eval.api.registry import get_model

    return get_model("hf").create_from_arg_string(f"pretrained={out}{model_args}",
                                                  {"batch_size": 1, "max_batch_size": None, "device": "cpu"})


def hf_windows(lm, text):
    """``(ids read, ids scored)`` of each window lm-eval's hf backend scores ``text`` with (its own code)."""
    from lm_eval import utils

    pairs = utils.get_rolling_token_windows(token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id,
                                            max_seq_len=lm.max_length, context_len=1)
    return [(context + scored[:-1], scored) for context, scored in map(utils.make_disjoint_window, pairs)]


def hf_documents(window: int, fmt):
    """Documents that fit one window (the hf backend and the library read each the same way), and one of
    three whole windows: after the first, the hf backend reads the ``window`` ids before each prediction
    block from position 0, the library from the block's offset in the document; RoPE attention depends
    only on the distance between positions, so full windows are one computation. A shorter last window
    would be topped up with earlier ids by lm-eval and not by the library, so the long document is cut to
    fill its windows exactly (``prefix[1:] + bytes``: ``3 * window`` ids)."""
    code = [p.read_text(encoding="utf-8") for p in helpers.stdlib_paths(60)[45:48]]
    n_long = 3 * window - (len(fmt.prefix) - 1)
    texts = [code[0][:n_long], code[1][:window - len(fmt.prefix) + 1], code[2][:40],
             "Café ☕ naïve façade — 日本語, 🙂\tand\n."]
    assert len(texts[0].encode("utf-8")) == n_long and len(texts[1].encode("utf-8")) == len(texts[1])
    assert all(len(t.encode("utf-8")) <= window - len(fmt.prefix) + 1 for t in texts[1:])
    return texts


def three_bits_per_byte(workdir, lm, texts, window, tmp_path):
    """Nats per document (library ``evaluate``, native backend, hf backend) and the three bits per byte."""
    perplexity_task(tmp_path, "local_ppl", texts)
    library = {t: library_nll(workdir, tmp_path, t, window) for t in texts}
    native = lm_eval_run(tmp_path, ["local_ppl"], f"workdir={workdir},window={window},batch_size=2")
    hf = lm_eval_run(tmp_path, ["local_ppl"], model=lm)
    nats = [library] + [{s["doc"]["text"]: -s["resps"][0][0] for s in out["samples"]["local_ppl"]}
                        for out in (native, hf)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    bpb = [sum(library.values()) / (math.log(2) * n_bytes)]
    bpb += [out["results"]["local_ppl"]["bits_per_byte,none"] for out in (native, hf)]
    return nats, bpb


@pytest.mark.slow
def test_hf_export_of_the_byte_baseline(bytes_run, tmp_path, no_network):
    """``lm_eval --model hf --model_args pretrained=EXPORT,add_bos_token=False`` reads a document as the byte
    baseline was trained (``<bos> bytes``), scores its bytes only, and gives the library's bits per byte."""
    from proxy_jax import huggingface

    out = tmp_path / "hf"
    huggingface.export_workdir(bytes_run, str(out))
    fmt = text_format.PLAIN
    lm, default = hf_lm(out, ",add_bos_token=False"), hf_lm(out)
    window = lm.max_length
    assert window == json.loads((out / "config.json").read_text())["max_position_embeddings"] == 64
    texts = hf_documents(window, fmt)
    for t in texts:
        ids = fmt.document_ids(t.encode("utf-8"))[:-1].tolist()  # 1 bytes (EOS is never scored)
        windows = hf_windows(lm, t)
        for j, (read, scored) in enumerate(windows):  # window j reads and predicts what the library's row j does
            assert read == ids[j * window: j * window + len(scored)]
            assert scored == ids[j * window + 1: j * window + 1 + len(scored)]
        assert sum(len(scored) for _, scored in windows) == len(ids) - 1  # every byte once, nothing else
        assert len(windows) == (3 if t is texts[0] else 1)
        # With lm-eval's default arguments the tokenizer writes <bos> and lm-eval puts its own before it.
        assert hf_windows(default, t)[0][0][:3] == [vocab.BOS, vocab.BOS, ids[1]]
    # Default arguments are right where lm-eval adds nothing itself: a context, a generation prompt.
    prompt = "def add(a, b):\n"
    assert default.tok_encode(prompt) == fmt.prompt_ids(prompt.encode()).tolist()
    assert default.tok_batch_encode([prompt])[0][0].tolist() == fmt.prompt_ids(prompt.encode()).tolist()

    (library, native, hf), (a, b, c) = three_bits_per_byte(bytes_run, lm, texts, window, tmp_path)
    for t in texts:
        assert native[t] == pytest.approx(library[t], rel=REL_TOL)
        assert hf[t] == pytest.approx(library[t], rel=HF_DOC_REL)
    assert b == pytest.approx(a, rel=REL_TOL)
    assert abs(c - a) <= HF_BPB_TOL and abs(c - b) <= HF_BPB_TOL, (a, b, c)


@pytest.mark.slow
def test_hf_export_of_a_sentinel_run(proxy_tokens_run, tmp_path, no_network):
    """A run with sentinels reads ``<bos> <raw> bytes``. lm-eval's hf backend conditions a perplexity document
    on one id of its own (``prefix_token_id``) and scores every id the tokenizer writes, so no model argument
    makes it read ``<bos> <raw>`` and score only the bytes: with ``add_bos_token=False`` it reads ``<bos>
    bytes``, by default ``<bos> <bos> <raw> bytes`` with both specials scored. Its number is the export's
    exact score of the ids it reads, and the export scores the run's own ids as the library does: the
    difference from the library is the missing ``<raw>``, not the export. ``--model proxy_jax`` gives a
    sentinel run's bits per byte through lm-eval."""
    torch = pytest.importorskip("torch")

    from proxy_jax import huggingface

    out = tmp_path / "hf"
    huggingface.export_workdir(proxy_tokens_run, str(out))
    fmt = text_format.SENTINEL
    lm, default = hf_lm(out, ",add_bos_token=False"), hf_lm(out)
    window = lm.max_length
    texts = hf_documents(window, fmt)
    for t in texts:
        body = vocab.encode_raw(t.encode("utf-8")).tolist()
        assert hf_windows(lm, t)[0][0][:2] == [vocab.BOS, body[0]]
        assert hf_windows(default, t)[0][0][:4] == [vocab.BOS, vocab.BOS, vocab.RAW_OPEN, body[0]]
        assert sum((scored for _, scored in hf_windows(default, t)), [])[:2] == [vocab.BOS, vocab.RAW_OPEN]
    prompt = "def add(a, b):\n"  # a context or a generation prompt is written as the run reads it
    assert default.tok_encode(prompt) == fmt.prompt_ids(prompt.encode()).tolist()
    assert default.tok_batch_encode([prompt])[0][0].tolist() == fmt.prompt_ids(prompt.encode()).tolist()

    (library, native, hf), _ = three_bits_per_byte(proxy_tokens_run, lm, texts, window, tmp_path)
    for t in texts:
        assert native[t] == pytest.approx(library[t], rel=REL_TOL)

    def export_nats(prefix, text):  # one window: the export's own log-probabilities of the text's bytes
        body = vocab.encode_raw(text.encode("utf-8")).tolist()
        ids = torch.tensor([[*prefix, *body]])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(ids).logits[0, :-1].double(), -1)
        return -float(logp[len(prefix) - 1:].gather(1, ids[0, len(prefix):, None]).sum())

    for t in texts[1:]:  # the documents that fit one window
        assert hf[t] == pytest.approx(export_nats([vocab.BOS], t), rel=HF_DOC_REL)
        assert library[t] == pytest.approx(export_nats(fmt.prefix, t), rel=HF_DOC_REL)
