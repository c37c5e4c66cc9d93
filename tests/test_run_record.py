"""A run carries what it is (run.json): the proxy it trained with is pinned, so a corpus that changed after
training changes neither evaluation nor a resumed run; one restore serves every consumer."""

import json
import logging
import os
import shutil

import numpy as np
import pytest

import helpers
from proxy_jax import assemble, proxies, restore, run_record, train
from proxy_jax.evaluation import score


def _corpus(root, names):
    os.makedirs(root, exist_ok=True)
    for path in names:
        shutil.copyfile(path, os.path.join(root, path.name))
    return str(root)


def _config(spec, folder, **overrides):
    return helpers.tiny_run_config(spec, **{**helpers.TINY_TOKENIZER, "data.source": "dir", "data.path": folder,
                                            "data.val_fraction": 0.0, **overrides})


@pytest.fixture(scope="module")
def files():
    paths = helpers.stdlib_paths(120)
    return paths[:40], paths[40:80], paths[80:]  # the corpus, files added later, documents to score


def test_tokenizer_run_scores_the_same_after_its_corpus_changed(tmp_path, files, caplog):
    first, added, scored = files
    folder = _corpus(tmp_path / "corpus", first)
    docs = _corpus(tmp_path / "scored", scored[:6])
    wd = str(tmp_path / "tokens")
    train.train(_config("configs/tokens.py:tiny", folder, **{"train.steps": 4}), wd, progress=False)
    record = run_record.read(wd)
    assert record.text_format == "compressed" and record.proxy["name"] == "tokenizer"
    pinned = os.path.join(wd, record.proxy["artifact"]["file"])
    assert proxies.base.file_sha256(pinned) == record.proxy["artifact"]["sha256"]
    assert record.vocab_size == 320 + record.proxy["num_symbols"]
    assert len(run_record.corpus_keys(wd)) == record.corpus["documents"] >= len(first)  # pieces of long files
    before = score.evaluate_workdir(wd, data=docs)

    _corpus(folder, added)
    # The changed corpus really would give another tokenizer, so the check below can fail.
    retrained = assemble.make_proxy(_config("configs/tokens.py:tiny", folder), str(tmp_path / "other"))
    assert retrained.model_sha256 != proxies.from_manifest(record.proxy, workdir=wd).model_sha256
    after = score.evaluate_workdir(wd, data=docs)
    assert after["raw_bpb"] == before["raw_bpb"] and after["raw_bytes"] == before["raw_bytes"]
    assert sorted(os.listdir(os.path.join(wd, "proxy"))) == [os.path.basename(pinned)]


def test_resumed_proxy_run_keeps_its_tokenizer_when_files_are_added(tmp_path, files, caplog):
    first, added, _ = files
    folder = _corpus(tmp_path / "corpus", first)
    wd = str(tmp_path / "proxy_tokens")
    config = _config("configs/proxy_tokens.py:tiny", folder)
    summary = train.train(config, wd, progress=False, stop_after=4)
    original = summary["run"].proxy
    sample = helpers.stdlib_paths(1)[0].read_bytes()[:2000]
    _corpus(folder, added)
    with caplog.at_level(logging.WARNING, logger="proxy_jax.assemble"):
        resumed = train.train(config, wd, progress=False)
    assert resumed["start_step"] == 4 and resumed["final_step"] == 8
    assert np.array_equal(resumed["run"].proxy.encode(sample), original.encode(sample))
    assert resumed["run"].proxy.manifest()["model_sha256"] == original.manifest()["model_sha256"]
    line = next(r.getMessage() for r in caplog.records if "training split changed" in r.getMessage())
    assert f"{len(added)} added ({added[0].name}" in line and "keeps the tokenizer proxy" in line
    assert len(os.listdir(os.path.join(wd, "proxy"))) == 1


def test_one_restore_serves_consumers_and_old_workdirs(tmp_path, caplog):
    """Parameters only (no optimiser state is read), the recorded proxy and text format; a workdir written
    before run.json existed is read from config.json + model.json, with one log line."""
    wd = str(tmp_path / "gzip")
    config = helpers.tiny_run_config(**{"train.steps": 4, "train.checkpoint_every": 2})
    summary = train.train(config, wd, progress=False)
    run = restore.restore(wd)
    assert run.step == 4 and run.text_format == "sentinel" and run.vocab_size == 576
    assert run.padded_vocab_size == run.args.padded_vocab_size == 640 and run.args.vocab_size == 576
    assert isinstance(run.proxy, proxies.GzipProxy) and run.proxy.level == config.proxy.gzip_level
    trained = summary["run"].state.params
    for a, b in zip(jax_leaves(run.params), jax_leaves(trained)):
        np.testing.assert_array_equal(a, b)
    assert restore.restore(wd, step=2).step == 2
    with pytest.raises(FileNotFoundError, match="no step 3"):
        restore.restore(wd, step=3)

    record = run_record.read(wd)
    os.remove(os.path.join(wd, run_record.RUN))
    with open(os.path.join(wd, "model.json"), "w") as f:
        json.dump({"args": record.model, "vocab_size": record.vocab_size}, f)
    with caplog.at_level(logging.INFO, logger="proxy_jax.restore"):
        old = restore.restore(wd)
    assert sum("derived it from config.json" in r.getMessage() for r in caplog.records) == 1
    assert old.text_format == "sentinel" and old.vocab_size == 576 and old.args == run.args
    assert run_record.exists(wd)  # written back once


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _snapshot(wd):
    out = {}
    for root, _, names in os.walk(wd):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, wd)] = f.read()
    return out


def test_a_refused_resume_changes_nothing_in_the_workdir(tmp_path):
    """Refused before building (a frozen key changed) or after (no checkpoint restores): config.json,
    config_history.jsonl, run.json and the checkpoints stay byte for byte as they were."""
    from proxy_jax import checkpoint, workdir as workdir_lib

    wd = str(tmp_path / "run")
    config = helpers.tiny_run_config("configs/bytes.py:tiny", **{"train.steps": 4, "train.checkpoint_every": 2})
    train.train(config, wd, progress=False)
    for step in os.listdir(os.path.join(wd, "checkpoints")):
        for root, _, names in os.walk(os.path.join(wd, "checkpoints", step, "state")):
            for name in names:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    before = _snapshot(wd)
    with pytest.raises(workdir_lib.ConfigMismatchError):
        train.train(helpers.tiny_run_config("configs/bytes.py:tiny", **{"data.seq_len": 32}), wd, progress=False)
    assert _snapshot(wd) == before
    longer = helpers.tiny_run_config("configs/bytes.py:tiny", **{"train.steps": 6, "train.checkpoint_every": 2})
    with pytest.raises(checkpoint.UnreadableCheckpointsError):
        train.train(longer, wd, progress=False)
    assert _snapshot(wd) == before


def test_scan_layers_auto_is_resolved_once_and_kept(tmp_path, monkeypatch):
    """``model.scan_layers = "auto"`` becomes True/False when a run is first built; config.json and run.json
    keep it, and neither a resume with "auto" nor a restore re-derives it where "auto" would now say otherwise
    (another platform or threshold: the parameter tree, "layers" vs "layer_i", was made with the first)."""
    import json as json_lib

    from proxy_jax.model import args as args_lib

    assert args_lib.resolve_scan_layers("auto", 4, "cpu") is False
    assert args_lib.resolve_scan_layers("auto", args_lib.SCAN_MIN_LAYERS_CPU, "cpu") is True
    assert args_lib.resolve_scan_layers("auto", 2, "tpu") is args_lib.resolve_scan_layers("auto", 2, "gpu") is True
    assert args_lib.resolve_scan_layers("False", 40, "tpu") is False
    with pytest.raises(ValueError, match="scan_layers='sometimes' is not a switch"):
        args_lib.resolve_scan_layers("sometimes", 2)

    wd = str(tmp_path / "run")
    spec, steps = "configs/bytes.py:tiny", {"train.checkpoint_every": 2}
    config = helpers.tiny_run_config(spec, **{"model.scan_layers": "auto", "train.steps": 2, **steps})
    train.train(config, wd, progress=False)
    with open(os.path.join(wd, "config.json")) as f:
        assert json_lib.load(f)["model"]["scan_layers"] is False  # two layers on a CPU: unrolled
    assert run_record.read(wd).model["scan_layers"] is False

    monkeypatch.setattr(args_lib, "SCAN_MIN_LAYERS_CPU", 1)  # "auto" would now scan
    run = restore.restore(wd)
    assert run.args.scan_layers is False and "layer_0" in run.params and "layers" not in run.params
    longer = helpers.tiny_run_config(spec, **{"model.scan_layers": "auto", "train.steps": 4, **steps})
    summary = train.train(longer, wd, progress=False)
    assert summary["start_step"] == 2 and summary["run"].model.args.scan_layers is False
    with open(os.path.join(wd, "config.json")) as f:
        assert json_lib.load(f)["model"]["scan_layers"] is False

    fresh = str(tmp_path / "fresh")  # a new run resolves "auto" anew
    train.train(helpers.tiny_run_config(spec, **{"model.scan_layers": "auto", "train.steps": 2, **steps}), fresh,
                progress=False)
    assert run_record.read(fresh).model["scan_layers"] is True and "layers" in restore.restore(fresh).params
