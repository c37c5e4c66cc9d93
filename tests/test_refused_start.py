"""A start that is refused writes nothing to its workdir, and the attention kernel is the machine's choice.

Every check that can refuse a run (the config, the devices and kernels of this machine, the saved run it
would resume, the corpus) runs before the lock, the record, the config or any folder is written; a run
restored on another backend uses a kernel that runs there.
"""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

import helpers
from proxy_jax import recipes, restore, train
from proxy_jax import workdir as workdir_lib
from proxy_jax.model.attention import kernel_error, runtime_kernel


def _config(corpus, spec="configs/bytes.py:tiny", **overrides):
    return recipes.load_config(os.path.join(helpers.ROOT, spec),
                               **{**helpers.TINY_RUN, "data.path": corpus, **overrides})


def _tree(root) -> list[str]:
    """Every file and folder under ``root``, relative to it."""
    out = []
    for folder, dirs, files in os.walk(root):
        out += [os.path.relpath(os.path.join(folder, n), root) for n in dirs + files]
    return sorted(out)


@pytest.mark.parametrize("override", [
    {"model.attention": "cudnn"},  # a GPU kernel on this CPU
    {"model.attention": "splash"},  # a TPU kernel on this CPU
    {"mesh.shape": (2, 1, 1)},  # more devices than this host has
    {"data.source": "arrayrecord"},  # a folder of .py files is no ArrayRecord corpus
])
def test_a_refused_first_start_writes_nothing(tmp_path, corpus, override):
    fresh = tmp_path / "new_run"
    with pytest.raises(ValueError):
        train.train(_config(corpus, **override), str(fresh), progress=False)
    assert not fresh.exists()
    existing = tmp_path / "made_by_the_user"
    existing.mkdir()
    with pytest.raises(ValueError):
        train.train(_config(corpus, **override), str(existing), progress=False)
    assert _tree(existing) == []  # the folder stays, empty: no lock, run.json, config.json or checkpoints/


def test_kernel_errors_name_the_flag_and_the_fallback_is_the_plain_kernel():
    platform = jax.default_backend()
    for impl in ("xla", "eva"):
        assert kernel_error(impl) is None and runtime_kernel(impl) == impl
    for impl, home in (("cudnn", "gpu"), ("splash", "tpu")):
        assert kernel_error(impl, home) is None and runtime_kernel(impl, home) == impl
        if platform != home:
            assert "--config.model.attention=xla" in kernel_error(impl)
            assert runtime_kernel(impl) == "xla"


def test_refused_then_trained_workdir_evaluates(tmp_path, corpus):
    """The issue's sequence: a refused cuDNN start, then the same workdir trained normally, is restored."""
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match="cudnn"):
        train.train(_config(corpus, **{"model.attention": "cudnn"}), workdir, progress=False)
    train.train(_config(corpus), workdir, progress=False)
    record = json.load(open(os.path.join(workdir, "run.json")))
    assert record["model"]["attention"] == "xla"
    assert restore.restore(workdir).step == helpers.TINY_RUN["train.steps"]


def test_a_run_trained_with_another_kernel_restores_here_with_the_same_numbers(tmp_path, bytes_run, caplog):
    """A run whose record and config say cuDNN (trained on a GPU) is restored on this CPU with the plain kernel
    (one log line) and scores exactly what the same parameters score with it."""
    if jax.default_backend() == "gpu":
        pytest.skip("cuDNN runs here; the fallback is for hosts without it")
    copy = str(tmp_path / "trained_on_gpu")
    shutil.copytree(bytes_run, copy)
    for name, keys in (("run.json", ("model",)), ("config.json", ("model",))):
        path = os.path.join(copy, name)
        saved = json.load(open(path))
        saved[keys[0]]["attention"] = "cudnn"
        json.dump(saved, open(path, "w"))
    docs = helpers.stdlib_docs(4, max_bytes=600)
    expected = restore.restore(bytes_run).bpb(docs, progress=False)
    with caplog.at_level(logging.INFO, logger="proxy_jax.restore"):
        moved = restore.restore(copy)
    assert moved.args.attention == "xla" and moved.config.model.attention == "xla"
    assert any("model.attention='cudnn'" in r.getMessage() for r in caplog.records)
    got = moved.bpb(docs, progress=False)
    np.testing.assert_equal(got["raw_bpb"], expected["raw_bpb"])
    # The commands' library functions read it too: evaluate scores it, export writes it.
    from proxy_jax.evaluation import score
    from proxy_jax.huggingface import export_workdir

    assert np.isfinite(score.evaluate_workdir(copy, max_docs=2)["raw_bpb"])
    assert export_workdir(copy, str(tmp_path / "hf")) == moved.step
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_a_refused_resume_records_nothing_and_says_nothing_of_changes(tmp_path, bytes_run, caplog):
    workdir = str(tmp_path / "run")
    shutil.copytree(bytes_run, workdir)
    before = {p: open(os.path.join(workdir, p), "rb").read() for p in _tree(workdir)
              if os.path.isfile(os.path.join(workdir, p)) and p != "lock"}
    config = workdir_lib.load_config(workdir)
    config.train.eval_every = 7  # resumable: would be recorded
    config.train.resume_step = 99  # resumable too, but names no checkpoint: refused once the run is set up
    with caplog.at_level(logging.INFO, logger="proxy_jax"):
        with pytest.raises(ValueError, match="resume_step=99"):
            train.train(config, workdir, progress=False)
    assert not any("Resuming with changed" in r.getMessage() for r in caplog.records)
    after = {p: open(os.path.join(workdir, p), "rb").read() for p in _tree(workdir)
             if os.path.isfile(os.path.join(workdir, p)) and p != "lock"}
    assert after == before


def test_a_refused_preprocess_leaves_no_output_folder(tmp_path, corpus):
    from proxy_jax import assemble

    output = tmp_path / "shards"
    config = _config(corpus, "configs/proxy_gzip.py:tiny", **{"data.source": "arrayrecord"})
    with pytest.raises(ValueError):
        assemble.preprocess(config, str(output), progress_bar=False)
    assert not output.exists()
