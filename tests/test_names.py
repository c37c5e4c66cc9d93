"""One name, one meaning: ``vocab_size`` is the logical vocabulary (the ids a model may score or emit),
``padded_vocab_size`` its embedding and head rows; what a caller gets by default never scores, emits or
exports a padded row. Also: the warning for warm-ups and cadences longer than the run, preprocess's
tokenizer cache (``--cache_dir``, cleared by ``--overwrite``), and progress without a terminal."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from proxy_jax import assemble, generate, recipes, run_record, sharding, train_step, vocab, workdir
from proxy_jax import config as config_lib
from proxy_jax import model as model_lib
from proxy_jax import optimizer as optimizer_lib
from proxy_jax.evaluation import bpb

SYMBOLS = 100  # vocabulary 420, padded to 512: 92 padded rows
LOGICAL, PADDED = vocab.vocab_size(SYMBOLS), vocab.padded_vocab_size(SYMBOLS)


def _old_record(args: model_lib.ModelArgs) -> dict:
    """A run.json as written before the two sizes had two names: model.vocab_size held the padded size."""
    return {"proxy": {"name": "gzip", "num_symbols": SYMBOLS}, "text_format": "compressed", "vocab_size": LOGICAL,
            "model": {**args.__dict__, "vocab_size": args.padded_vocab_size}, "num_targets": 1,
            "mesh": {}, "corpus": {}}


@pytest.fixture(scope="module")
def tiny():
    """A one-layer float32 model whose ``ModelArgs`` come from an old-style run record, and its eval step
    built with the default vocabulary."""
    config = config_lib.base_config()
    recipes.apply_size(config, "tiny")
    config.model.dtype, config.model.num_layers = "float32", 1
    built = model_lib.ModelArgs.from_config(config.model, LOGICAL)
    args = run_record.RunRecord.from_json(_old_record(built)).args
    assert (args.vocab_size, args.padded_vocab_size) == (LOGICAL, PADDED) and args == built
    model = model_lib.Transformer(args)
    mesh = sharding.make_mesh(config)
    tx, _ = optimizer_lib.make_optimizer(config.opt, 10)
    state, shardings = sharding.init_train_state(config, model, tx, mesh, jax.random.key(7))
    step = train_step.make_eval_step(config, model, mesh, shardings)  # vocab_size omitted
    return config, model, mesh, state.params, step


def test_eval_step_default_scores_only_logical_ids(tiny):
    """Against log-softmax over the logical rows in numpy: targets at or above the logical vocabulary are
    not counted, and the padded rows take no probability mass (over all rows the sum differs)."""
    config, model, mesh, params, step = tiny
    rng = np.random.default_rng(0)
    tokens = rng.integers(vocab.BYTE_OFFSET, PADDED, size=(8, 33)).astype(np.int32)  # some padded ids too
    tokens[:, 0] = vocab.BOS
    segments = np.ones_like(tokens)
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape).copy()
    batch = {"tokens": tokens, "segment_ids": segments, "positions": positions}
    out = {k: float(v) for k, v in jax.device_get(step(params, sharding.host_to_global(batch, mesh))).items()}

    logits, _ = jax.jit(lambda p, t, s, q: model.apply({"params": p}, t, s, q))(
        params, tokens[:, :-1], segments[:, :-1], positions[:, :-1])
    logits = np.asarray(logits[:, :, 0], np.float64)
    assert logits.shape[-1] == PADDED
    targets = tokens[:, 1:]
    counted = targets < LOGICAL

    def nll(rows: int) -> float:
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits[..., :rows]), axis=-1))
        picked = np.take_along_axis(logp, np.minimum(targets, rows - 1)[..., None], -1)[..., 0]
        return -float(picked[counted].sum())

    assert 0 < counted.sum() < counted.size
    assert out["count"] == counted.sum()
    np.testing.assert_allclose(out["sum_nll"], nll(LOGICAL), rtol=2e-5)
    assert abs(nll(PADDED) - nll(LOGICAL)) > 1e-3 * nll(LOGICAL)  # the padded rows would have changed it


def test_generate_default_never_emits_a_padded_id(tiny):
    """Sampling at temperature 1 from a random model: with 92 of 512 rows padded, 80 draws would pick a
    padded id with probability > 1 - 1e-6 if they were allowed. The toy proxy decodes symbol s to byte
    s - 320, so every id below the logical vocabulary decodes below byte 100."""
    _, model, _, params, _ = tiny

    class Toy:
        def encode(self, doc: bytes) -> np.ndarray:
            return vocab.COMP_OFFSET + np.frombuffer(doc, np.uint8).astype(np.int32) % SYMBOLS

        def decode(self, ids) -> bytes:
            return bytes(int(i) - vocab.COMP_OFFSET for i in ids)

    out = generate.generate(model, params, [b"def f(x):", b"import os"], max_new_bytes=40, temperature=1.0,
                            rng=jax.random.key(1), fmt="compressed", proxy=Toy())
    emitted = b"".join(out)
    assert len(emitted) >= 40 and max(emitted) < SYMBOLS


def test_export_default_writes_only_logical_rows(tiny, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    from proxy_jax import huggingface

    _, model, _, params, _ = tiny
    huggingface.export_params(model.args, jax.device_get(params), str(tmp_path))  # vocab_size omitted
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == LOGICAL and config["proxy_jax"]["padded_vocab_size"] == PADDED
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["model.embed_tokens.weight"].shape[0] == LOGICAL
    assert tensors["lm_head.weight"].shape[0] == LOGICAL


def test_old_config_keys_load_and_resume(tmp_path):
    """A config.json with the old key model.vocab_size (the padded rows) and a dtype alias loads under the
    new names, and resuming it with the same settings finds nothing changed."""
    config = config_lib.base_config()
    config.model.padded_vocab_size, config.model.dtype = 640, "float16"
    saved = json.loads(config.to_json_best_effort())
    saved["model"]["vocab_size"] = saved["model"].pop("padded_vocab_size")
    saved["model"]["dtype"] = "fp16"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    loaded = workdir.load_config(str(tmp_path))
    assert loaded.model.padded_vocab_size == 640 and loaded.model.dtype == "float16"
    assert "vocab_size" not in loaded.model
    assert workdir.check_resume(config, str(tmp_path)) == {}
    config.model.dtype = "fp16"  # an alias on the command line is the same setting
    assert workdir.check_resume(config, str(tmp_path)) == {}


def test_build_names_both_sizes_and_warns_of_a_short_run(tmp_path, caplog):
    """Assigning ``train.steps`` keeps the preset's warm-ups and cadences: one warning line names them.
    The built model's ``vocab_size`` is the logical one, the record's too; config.json keeps float16."""
    shrink = {k: v for k, v in helpers.TINY.items() if not k.startswith("train.")}
    config = recipes.load_config("configs/proxy_gzip.py:tiny", **shrink, **{"model.dtype": "fp16"})
    config.train.steps = 3  # plain assignment: nothing rescaled
    with caplog.at_level(logging.WARNING, logger="proxy_jax.assemble"):
        run = assemble.build(config, str(tmp_path), with_pipeline=False)
    lines = [r.getMessage() for r in caplog.records if "is shorter than" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    for key in ("opt.warmup_steps", "mix.warmup_steps", "train.checkpoint_every", "train.eval_every"):
        group, name = key.split(".")
        assert f"{key}={config[group][name]}" in lines[0]
    assert run.model.args.vocab_size == run.record.vocab_size == 576
    assert run.model.args.padded_vocab_size == run.record.padded_vocab_size == 640
    assert run.config.model.dtype == "float16"


@pytest.mark.parametrize("spec", ["bytes", "tokens", "proxy_tokens", "proxy_gzip", "proxy_neural", "m1"])
def test_rescaled_steps_never_warn(spec):
    """What --config.train.steps gives (``with_steps``) is never longer than the run, for any step count."""
    for steps in [1, 2, 3, 5, 7, 10, 13, 50, 99, 1000]:
        config = recipes.load_config(f"{spec}:tiny", **{"train.steps": steps})
        assert recipes.longer_than_run(config) == [], (spec, steps)
    config = recipes.load_config(f"{spec}:tiny")
    config.train.steps = 1
    assert recipes.longer_than_run(config)


def test_eval_progress_without_a_terminal_writes_plain_lines(tiny, capsys):
    config, _, mesh, params, step = tiny
    docs = [d[:300] for d in helpers.stdlib_docs(4)]
    scores = bpb.model_bpb(step, params, mesh, docs, config=config, fmt="sentinel", window=64, progress=True)
    err = capsys.readouterr().err
    assert np.isfinite(scores["raw_bpb"])
    assert "\r" not in err and "eval batch " in err and "batches/s" in err


def _preprocess(out, corpus, *extra, env=None):
    return subprocess.run(
        [sys.executable, "-m", "proxy_jax.preprocess", "--config=proxy_tokens:tiny", f"--output={out}",
         "--config.data.source=dir", f"--config.data.path={corpus}", "--num_shards=1", "--splits=train",
         "--config.proxy.train_max_bytes=100000", *extra],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_preprocess_cache_dir_overwrite_and_log(tmp_path):
    """One command: the deprecated --workdir warns once and is the tokenizer cache; no TPU probe line and no
    carriage return reaches a log file. --overwrite with other settings removes the old default cache."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in helpers.stdlib_paths(30):
        (corpus / path.name).write_bytes(path.read_bytes()[:4000])
    env = {**os.environ, "JAX_PLATFORMS": ""}  # let JAX probe for a TPU, as on a user's machine
    cache = tmp_path / "cache"
    got = _preprocess(tmp_path / "a", corpus, f"--workdir={cache}", "--config.proxy.vocab_size=512", env=env)
    assert got.returncode == 0, got.stderr
    assert got.stderr.count("--workdir is deprecated") == 1 and "--cache_dir" in got.stderr
    assert "Unable to initialize backend" not in got.stderr and "\r" not in got.stderr
    assert "train doc " in got.stderr
    assert [p.name for p in (cache / "proxy").iterdir()][0].startswith("tokenizer-v512-")
    assert not (tmp_path / "a" / "work").exists()

    from proxy_jax.data import shard_writer

    out = tmp_path / "b"
    config = helpers.config_with("configs/proxy_tokens.py:tiny", **{
        "data.source": "dir", "data.path": str(corpus), "proxy.train_max_bytes": 100_000, "proxy.vocab_size": 512})
    assemble.preprocess(config, str(out), num_shards=1, splits=("train",), progress_bar=False)
    old = sorted(p.name for p in (out / shard_writer.CACHE_DIR / "proxy").iterdir())
    config.proxy.vocab_size = 520
    assemble.preprocess(config, str(out), num_shards=1, splits=("train",), progress_bar=False, overwrite=True)
    new = sorted(p.name for p in (out / shard_writer.CACHE_DIR / "proxy").iterdir())
    assert old and new and all(n.startswith("tokenizer-v520-") for n in new) and not set(old) & set(new)
