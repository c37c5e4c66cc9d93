"""Llama export: transformers reproduces our logits, extra heads and greedy byte generation exactly.

A small random model (GQA, a vocabulary padded past 320, two main heads and one raw head, nonzero
RMSNorm scales so the ``1 + w`` conversion matters, a head large enough that greedy decoding varies)
is exported and loaded with ``AutoModelForCausalLM``; both layer layouts (scanned and unrolled) are
checked. Tolerance for float32 logits: atol 1e-4 (observed differences are ~1e-6).
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from proxy_jax import export, generate, vocab  # noqa: E402
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
    assert extra["head.1"].shape == (args.padded_vocab_size, args.d_model)
    assert extra["raw_head.0"].shape == (vocab.RAW_VOCAB_SIZE, args.d_model)
    prompts_ids = [_prompt_ids(p) for p in PROMPTS]
    logits_BxLxHxV, raw_BxLxRxC = _ours(args, params, prompts_ids)
    for row, ids in enumerate(prompts_ids):
        logits_LxHxV, raw_LxRxC = logits_BxLxHxV[row, : len(ids)], raw_BxLxRxC[row, : len(ids)]
        with torch.no_grad():
            res = hf(torch.tensor([ids]), output_hidden_states=True)
        hf_logits_LxV = res.logits[0].numpy()
        assert hf_logits_LxV.shape == (len(ids), args.padded_vocab_size)
        assert logits_LxHxV[:, 0].std() > 1.0  # the comparison is not between near-zero numbers
        np.testing.assert_allclose(hf_logits_LxV, logits_LxHxV[:, 0], atol=ATOL, rtol=0)
        # The side file's heads applied to HF's final-norm output give our extra heads.
        hidden_LxD = res.hidden_states[-1][0].numpy()
        np.testing.assert_allclose(hidden_LxD @ extra["head.1"].T, logits_LxHxV[:, 1], atol=ATOL, rtol=0)
        np.testing.assert_allclose(hidden_LxD @ extra["raw_head.0"].T, raw_LxRxC[:, 0], atol=ATOL, rtol=0)


def _hf_greedy(hf, tok, prompts: list[bytes]) -> list[bytes]:
    enc = tok([p.decode("utf-8") for p in prompts], padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = hf.generate(**enc, max_new_tokens=NEW_BYTES, do_sample=False)
    texts = []
    for row in ids[:, enc["input_ids"].shape[1] :].tolist():
        stops = [k for k, t in enumerate(row) if t in (vocab.EOS, vocab.RAW_CLOSE)]
        texts.append(vocab.decode_raw(row[: stops[0]] if stops else row))  # strict: only bytes before a stop
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
    allowed = set(range(args.padded_vocab_size)) - suppressed
    assert allowed == set(range(64, 320)) | {vocab.EOS, vocab.RAW_CLOSE}
    assert set(hf.generation_config.eos_token_id) == {vocab.EOS, vocab.RAW_CLOSE}


def test_config_fields(scanned):
    args, _, out, hf, _ = scanned
    c = hf.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size) == (512, 64, 96)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 4, 2, 16)
    assert not c.tie_word_embeddings
    assert (c.bos_token_id, c.pad_token_id) == (vocab.BOS, vocab.PAD)
    with open(f"{out}/config.json") as f:
        raw = json.load(f)
    assert raw["rope_theta"] == args.rope_theta and raw["rms_norm_eps"] == args.norm_eps
    assert raw["proxy_jax"]["num_raw_pred_heads"] == 1


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


# Trains, then runs the command in a fresh interpreter: over 20 s on 2 cores.
@pytest.mark.slow
def test_command_exports_a_trained_workdir(tmp_path):
    """``python -m proxy_jax.export`` on a tiny byte run trained for 3 steps: transformers gives our logits."""
    import os
    import subprocess
    import sys

    from proxy_jax import recipes, train
    from proxy_jax import workdir as workdir_lib

    config = recipes.load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "bytes.py") + ":tiny", **{
        "train.steps": 3, "train.eval_every": 0, "train.tensorboard": False, "train.checkpoint_every": 100,
        "data.seq_len": 64, "data.batch_size": 2, "data.max_doc_bytes": 2000, "model.d_model": 32,
        "model.d_ff": 64, "model.num_heads": 2, "model.num_kv_heads": 1, "model.head_dim": 16,
        "model.num_layers": 2, "model.dtype": "float32"})
    workdir, out = tmp_path / "run", tmp_path / "hf"
    train.train(config, str(workdir), progress=False)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "proxy_jax.export", f"--workdir={workdir}", f"--out={out}"],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == f"exported step 3 of {workdir} to {out}"
    assert json.loads((out / "config.json").read_text())["proxy_jax_checkpoint_step"] == 3

    restored = restore_lib.restore(str(workdir))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), **_load_kwargs()).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = tok("def add(a, b):\n    return a + b\n")["input_ids"]
    assert ids == _prompt_ids(b"def add(a, b):\n    return a + b\n")
    ours_LxV = _ours(restored.args, restored.params, [ids])[0][0, :, 0]
    with torch.no_grad():
        theirs_LxV = hf(torch.tensor([ids])).logits[0].numpy()
    assert ours_LxV.std() > 0.05  # trained, not a constant
    np.testing.assert_allclose(theirs_LxV, ours_LxV, atol=ATOL, rtol=0)
