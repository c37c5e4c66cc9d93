"""Llama export: transformers reproduces our logits, extra heads and greedy generation exactly.

A small random model (GQA, a logical vocabulary of 400 padded to 512, two main heads and one raw head,
nonzero RMSNorm scales so the ``1 + w`` conversion matters, a head large enough that greedy decoding
varies) is exported and loaded with ``AutoModelForCausalLM``; both layer layouts (scanned and unrolled)
are checked. Tolerance for float32 logits: atol 1e-4 (observed differences are ~1e-6).

Trained runs (``conftest.py``: the byte baseline, the paper's recipe, the tokenizer baseline) are
exported as ``python -m proxy_jax.export`` does and compared with the library: greedy bytes, and the
log-probabilities of held-out text summed as bits per byte (``run.bpb``), relative tolerance 1e-4
(float32 sums of a few thousand log-probabilities computed in a different order).
"""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from proxy_jax import generate, text_format, vocab  # noqa: E402
from proxy_jax import huggingface as export  # noqa: E402
from proxy_jax.model import ModelArgs, Transformer  # noqa: E402

ATOL = 1e-4
PROMPTS = [b"def f(x):\n    return", b"import os", b"\xc3\xa9t\xc3\xa9 <eos> 42", b"a"]
NEW_BYTES = 16


def _args(scan_layers: bool) -> ModelArgs:
    return ModelArgs(
        vocab_size=400, padded_vocab_size=512, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
        head_dim=16, d_ff=96, num_pred_heads=2, num_raw_pred_heads=1, dtype="float32",
        scan_layers=scan_layers,
    )


def _random_params(args: ModelArgs, seed: int):
    def make(key):
        init_key, spread_key = jax.random.split(key)
        z = jnp.zeros((1, 1), jnp.int32)
        params = nn.unbox(Transformer(args).init(init_key, z, z, z)["params"])
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        keys = jax.random.split(spread_key, len(leaves))
        out = []
        for (path, x), k in zip(leaves, keys):
            name = jax.tree_util.keystr(path)
            if "scale" in name:  # RMSNorm starts at w = 0; a random w tests the (1 + w) conversion
                x = 0.5 * jax.random.normal(k, x.shape, x.dtype)
            elif "head" in name:  # the 0.02 init gives near-flat logits; argmaxes must depend on context
                x = jax.random.normal(k, x.shape, x.dtype) * 4.0 / np.sqrt(args.d_model)
            out.append(x)
        return jax.tree_util.tree_unflatten(treedef, out)

    return jax.jit(make)(jax.random.key(seed))


def _unrolled(args: ModelArgs, params):
    """The same model with one params entry per layer instead of a stacked ``layers`` entry."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(args.num_layers):
        out[f"layer_{i}"] = jax.tree.map(lambda x: x[i], params["layers"])
    return dataclasses.replace(args, scan_layers=False), out


def _load_kwargs():
    major = int(transformers.__version__.split(".")[0])
    return {"dtype" if major >= 5 else "torch_dtype": torch.float32}


def _export_and_load(args, params, out):
    export.export_params(args, params, out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, **_load_kwargs()).eval()
    return args, params, out, hf, transformers.AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    args = _args(True)
    return _export_and_load(args, _random_params(args, seed=3), str(tmp_path_factory.mktemp("hf_scan")))


@pytest.fixture(scope="module", params=[True, False], ids=["scan", "unrolled"])
def exported(request, scanned, tmp_path_factory):
    if request.param:
        return scanned
    args, params = _unrolled(*scanned[:2])
    return _export_and_load(args, params, str(tmp_path_factory.mktemp("hf_unrolled")))


def _ours(args, params, prompts_ids: list[list[int]]):
    """Our head logits [B, L, H, V] and raw-head logits [B, L, R, 320] for right-padded prompts."""
    length = max(len(x) for x in prompts_ids)
    tokens = np.zeros((len(prompts_ids), length), np.int32)
    segments = np.zeros_like(tokens)
    for row, ids in enumerate(prompts_ids):
        tokens[row, : len(ids)], segments[row, : len(ids)] = ids, 1
    positions = np.broadcast_to(np.arange(length), tokens.shape)
    logits, raw = jax.jit(Transformer(args).apply)({"params": params}, tokens, segments, positions)
    return np.asarray(logits), np.asarray(raw)


def _prompt_ids(prompt: bytes) -> list[int]:
    return [vocab.BOS, vocab.RAW_OPEN] + vocab.encode_raw(prompt).tolist()


def test_logits_and_extra_heads_match(exported):
    args, params, out, hf, _ = exported
    from safetensors.numpy import load_file

    extra = load_file(f"{out}/{export.EXTRA_HEADS_FILE}")
    assert sorted(extra) == ["head.1", "raw_head.0"]
    assert extra["head.1"].shape == (args.vocab_size, args.d_model)  # the logical rows only
    assert extra["raw_head.0"].shape == (vocab.RAW_VOCAB_SIZE, args.d_model)
    prompts_ids = [_prompt_ids(p) for p in PROMPTS]
    logits_BxLxHxV, raw_BxLxRxC = _ours(args, params, prompts_ids)
    for row, ids in enumerate(prompts_ids):
        logits_LxHxV, raw_LxRxC = logits_BxLxHxV[row, : len(ids)], raw_BxLxRxC[row, : len(ids)]
        with torch.no_grad():
            res = hf(torch.tensor([ids]), output_hidden_states=True)
        hf_logits_LxV = res.logits[0].numpy()
        assert hf_logits_LxV.shape == (len(ids), args.vocab_size)  # no padded rows
        assert logits_LxHxV[:, 0].std() > 1.0  # the comparison is not between near-zero numbers
        np.testing.assert_allclose(hf_logits_LxV, logits_LxHxV[:, 0, : args.vocab_size], atol=ATOL, rtol=0)
        # The side file's heads applied to HF's final-norm output give our extra heads.
        hidden_LxD = res.hidden_states[-1][0].numpy()
        np.testing.assert_allclose(hidden_LxD @ extra["head.1"].T, logits_LxHxV[:, 1, : args.vocab_size], atol=ATOL,
                                   rtol=0)
        np.testing.assert_allclose(hidden_LxD @ extra["raw_head.0"].T, raw_LxRxC[:, 0], atol=ATOL, rtol=0)


def _hf_greedy(hf, tok, prompts: list[bytes], stop_ids=(vocab.EOS, vocab.RAW_CLOSE),
               decode=vocab.decode_raw) -> list[bytes]:
    enc = tok([p.decode("utf-8") for p in prompts], padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = hf.generate(**enc, max_new_tokens=NEW_BYTES, do_sample=False)
    texts = []
    for row in ids[:, enc["input_ids"].shape[1] :].tolist():
        stops = [k for k, t in enumerate(row) if t in stop_ids]
        texts.append(decode(np.asarray(row[: stops[0]] if stops else row)))  # strict: only text ids before a stop
    return texts


def test_greedy_generation_matches_byte_for_byte(scanned):
    args, params, _, hf, tok = scanned
    ours = generate.generate(Transformer(args), params, PROMPTS, max_new_bytes=NEW_BYTES, temperature=0.0)
    assert len(set(b"".join(ours))) > 3  # greedy is not a constant byte, so agreement means something
    # One left-padded batch (HF derives positions from the attention mask) and one prompt at a time.
    assert _hf_greedy(hf, tok, PROMPTS) == ours
    assert [_hf_greedy(hf, tok, [p])[0] for p in PROMPTS] == ours


def test_generation_config_allows_exactly_bytes_and_stops(scanned):
    args, _, out, hf, _ = scanned
    with open(f"{out}/generation_config.json") as f:
        suppressed = set(json.load(f)["suppress_tokens"])
    allowed = set(range(args.vocab_size)) - suppressed
    assert allowed == set(range(64, 320)) | {vocab.EOS, vocab.RAW_CLOSE}
    assert allowed == set(np.flatnonzero(text_format.SENTINEL.allowed_mask(args.vocab_size, args.vocab_size)))
    assert set(hf.generation_config.eos_token_id) == {vocab.EOS, vocab.RAW_CLOSE}


def test_config_fields(scanned):
    args, _, out, hf, _ = scanned
    c = hf.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size) == (400, 64, 96)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 4, 2, 16)
    assert not c.tie_word_embeddings
    assert (c.bos_token_id, c.pad_token_id) == (vocab.BOS, vocab.PAD)
    with open(f"{out}/config.json") as f:
        raw = json.load(f)
    assert raw["rope_theta"] == args.rope_theta and raw["rms_norm_eps"] == args.norm_eps
    assert raw["proxy_jax"]["num_raw_pred_heads"] == 1
    assert raw["proxy_jax"]["logical_vocab_size"] == 400 and raw["proxy_jax"]["text_format"] == "sentinel"


def test_tokenizer_round_trip(scanned):
    *_, tok = scanned
    text = "héllo\twörld\n  日本 <eos></raw><0x41>\x00"
    data = text.encode("utf-8")
    ids = tok(text)["input_ids"]
    assert ids == [vocab.BOS, vocab.RAW_OPEN] + [b + 64 for b in data]  # literal specials stay bytes
    assert tok(text, add_special_tokens=False)["input_ids"] == [b + 64 for b in data]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode([vocab.BOS, vocab.RAW_OPEN, 64 + ord("a"), vocab.RAW_CLOSE, vocab.EOS]) == "<bos><raw>a</raw><eos>"
    assert tok.convert_ids_to_tokens([0, 3, 14, 15, 64, 319]) == ["<pad>", "<special3>", "<comp>", "</comp>", "<0x00>", "<0xFF>"]
    assert "token_type_ids" not in tok(text)  # Llama's generate rejects them
    assert tok.padding_side == "left" and tok.pad_token_id == vocab.PAD and tok.eos_token_id == vocab.EOS


def test_single_head_model_writes_no_side_file(scanned, tmp_path):
    args, params = scanned[:2]
    args = dataclasses.replace(args, num_pred_heads=1, num_raw_pred_heads=0)
    params = {k: v for k, v in params.items() if k != "raw_head"} | {"head": params["head"][:, :1]}
    (tmp_path / export.EXTRA_HEADS_FILE).write_bytes(b"stale")
    export.export_params(args, params, str(tmp_path))
    assert not (tmp_path / export.EXTRA_HEADS_FILE).exists()
    assert (tmp_path / "model.safetensors").exists()


def test_eva_is_refused(tmp_path):
    args = dataclasses.replace(_args(True), attention="eva")
    with pytest.raises(ValueError, match=r"^model.attention='eva' cannot be exported.*until an equivalent exists there"):
        export.export_params(args, {}, str(tmp_path))
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_plain_format_prompts_as_the_byte_baseline_was_trained(scanned, tmp_path):
    """A ``plain`` export prompts ``<bos> bytes`` (no ``<raw>``), stops at EOS only, and generates as we do."""
    args, params = scanned[:2]
    export.export_params(args, params, str(tmp_path), fmt="plain")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), **_load_kwargs()).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok("ab")["input_ids"] == [vocab.BOS, 64 + ord("a"), 64 + ord("b")]
    assert set(hf.generation_config.eos_token_id) == {vocab.EOS}
    allowed = set(range(args.vocab_size)) - set(hf.generation_config.suppress_tokens)
    assert allowed == set(range(64, 320)) | {vocab.EOS}
    ours = generate.generate(Transformer(args), params, PROMPTS, max_new_bytes=NEW_BYTES, fmt="plain")
    assert ours != generate.generate(Transformer(args), params, PROMPTS, max_new_bytes=NEW_BYTES)  # <raw> matters
    assert _hf_greedy(hf, tok, PROMPTS, stop_ids=(vocab.EOS,)) == ours


def test_generation_config_and_context(scanned, tmp_path):
    args, params = scanned[:2]
    export.export_params(args, params, str(tmp_path), context=96)
    with open(tmp_path / "generation_config.json") as f:
        gen = json.load(f)
    assert gen["max_new_tokens"] == 96 and gen["do_sample"] is False  # at most the trained context
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.model_max_length == 96
    assert json.loads((tmp_path / "config.json").read_text())["max_position_embeddings"] == 96


def test_decoding_keeps_valid_bytes_around_invalid_utf8(scanned):
    """Decoding reads the bytes as UTF-8 with one U+FFFD per invalid sequence, as Python's 'replace' does."""
    *_, tok = scanned
    rng = np.random.default_rng(0)
    cases = [b"ok \xff\xfe then \xc3\xa9", b"\xe6\x97\xa5\xe6\x9c", "é日本\n".encode() + bytes([0x80, 0x41])]
    cases += [bytes(rng.choice([0x41, 0x80, 0xC3, 0xA9, 0xE6, 0x97, 0xF0, 0x0A], size=20)) for _ in range(50)]
    for data in cases:
        ids = [b + 64 for b in data]
        assert tok.decode(ids) == data.decode("utf-8", errors="replace")
        assert tok.decode([vocab.BOS, vocab.RAW_OPEN, *ids], skip_special_tokens=True) == data.decode(
            "utf-8", errors="replace")


def test_a_missing_extra_is_one_sentence_before_any_restore(tmp_path, monkeypatch):
    import importlib.util

    import types

    from proxy_jax import restore

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tokenizers" else real(name, *a))
    monkeypatch.setattr(restore, "read_record", lambda workdir: types.SimpleNamespace(text_format="sentinel"))
    monkeypatch.setattr(restore, "restore", lambda *a, **k: pytest.fail("restored before checking the extra"))
    with pytest.raises(ValueError, match=r"^exporting needs tokenizers, .* pip install 'proxy_jax\[export\]'\.$"):
        export.export_workdir(str(tmp_path), str(tmp_path / "hf"))


# ---- trained runs (conftest.py) ---------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PROMPTS = [b"def add(a, b):\n    return", b"import os\n", b"class A:\n    def __init__(self):\n"]


def _command(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "proxy_jax.export", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _load(out):
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), **_load_kwargs()).eval()
    return hf, transformers.AutoTokenizer.from_pretrained(str(out))


def _hf_bpb(hf, fmt, docs, encode=None) -> float:
    """Bits per byte from transformers' log-softmax, each document alone (``run.bpb``'s rule)."""
    nll = 0.0
    for doc in docs:
        ids = fmt.document_ids(doc, encode)
        with torch.no_grad():
            logp_LxV = torch.log_softmax(hf(torch.tensor([ids.tolist()])).logits[0].double(), -1).numpy()
        targets = ids[1:]
        scored = np.flatnonzero(fmt.scored(targets))
        nll -= float(logp_LxV[scored, targets[scored]].sum())
    return nll / (np.log(2) * sum(len(d) for d in docs))


def _check_run(workdir, out, expect_format: str, proxy=None):
    """Greedy bytes and bits per byte of the export equal the library's for the run in ``workdir``."""
    from proxy_jax.evaluation import sampler as sampler_lib

    s = sampler_lib.load(workdir)
    assert s.fmt.name == expect_format
    hf, tok = _load(out)
    assert hf.config.vocab_size == s.run.vocab_size  # the logical vocabulary, no padded rows
    assert json.loads((out / "config.json").read_text())["proxy_jax"]["logical_vocab_size"] == s.run.vocab_size
    encode = proxy.encode if proxy is not None else None
    for p in RUN_PROMPTS:  # the tokenizer writes a prompt exactly as the run was trained to read it
        assert tok(p.decode())["input_ids"] == s.fmt.prompt_ids(p, encode).tolist()
    ours, _ = s.complete(RUN_PROMPTS, max_new=NEW_BYTES)
    assert any(ours)
    decode = proxy.decode if proxy is not None else vocab.decode_raw
    assert _hf_greedy(hf, tok, RUN_PROMPTS, stop_ids=s.fmt.stop_ids, decode=decode) == ours
    docs = [d[:300] for d in helpers.stdlib_docs(4, 300)]
    ours_bpb = s.run.bpb(docs, window=4096, progress=False)["raw_bpb"]
    assert _hf_bpb(hf, s.fmt, docs, encode) == pytest.approx(ours_bpb, rel=1e-4)


@pytest.mark.slow
def test_byte_baseline_export_matches_the_library(bytes_run, tmp_path):
    """``python -m proxy_jax.export`` on the byte baseline: prompts ``<bos> bytes``, same greedy bytes and
    bits per byte as the library."""
    out = tmp_path / "hf"
    done = _command(f"--workdir={bytes_run}", f"--out={out}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == f"exported step 3 of {bytes_run} to {out}"
    assert json.loads((out / "config.json").read_text())["proxy_jax"]["text_format"] == "plain"
    _check_run(bytes_run, out, "plain")


@pytest.mark.slow
def test_proxy_run_export_matches_the_library(proxy_tokens_run, tmp_path):
    export.export_workdir(proxy_tokens_run, str(tmp_path))
    _check_run(proxy_tokens_run, tmp_path, "sentinel")


@pytest.mark.slow
def test_tokenizer_baseline_exports_with_its_own_tokenizer(tokens_run, tmp_path):
    from proxy_jax import restore

    export.export_workdir(tokens_run, str(tmp_path))
    proxy = restore.restore(tokens_run).proxy  # the tokenizer its record pins
    _check_run(tokens_run, tmp_path, "compressed", proxy=proxy)
    _, tok = _load(tmp_path)
    for doc in helpers.stdlib_docs(8, 2000):  # the converted tokenizer encodes as the run's proxy does
        text = doc.decode()
        assert tok(text)["input_ids"] == [vocab.BOS, *proxy.encode(doc).tolist()]
        assert tok.decode(proxy.encode(doc).tolist()) == text


@pytest.mark.slow
def test_command_errors_are_one_sentence(bytes_run, tmp_path):
    missing = _command(f"--workdir={tmp_path / 'nowhere'}", f"--out={tmp_path / 'hf'}")
    assert missing.returncode == 2 and missing.stderr.startswith("error: --workdir=")
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    step = _command(f"--workdir={bytes_run}", f"--out={tmp_path / 'hf'}", "--step=7")
    assert step.returncode == 2 and step.stderr.startswith("error: ") and "no step 7" in step.stderr
    assert len(step.stderr.strip().splitlines()) == 1, step.stderr
