"""The lm-evaluation-harness backend on a 2x2x2 (data, fsdp, tensor) mesh: a byte run trained there gives the
library's per-document nats (rows rounded up to the 4 devices the batch is split over) and its generation."""

import math
import os

import helpers
import jax
import pytest
from test_lm_eval import REL_TOL, ROOT, TRAIN, documents, library_nll, requests

from proxy_jax import recipes, train
from proxy_jax.evaluation import lm_eval_backend
from proxy_jax.evaluation import sampler as sampler_lib


@pytest.mark.slow
def test_backend_on_a_sharded_mesh(tmp_path_factory, tmp_path):
    assert len(jax.devices()) == 8
    corpus = helpers.shared_folder("corpus", helpers.write_corpus)  # conftest's, built once per session
    workdir = str(tmp_path_factory.mktemp("bytes"))
    config = recipes.load_config(os.path.join(ROOT, "configs/bytes.py:tiny"), **{
        **TRAIN, "train.steps": 10, "train.checkpoint_every": 10, "data.batch_size": 8, "data.path": corpus,
        "mesh.shape": (2, 2, 2)})
    train.train(config, workdir, progress=False)
    lm = lm_eval_backend.ProxyJaxLM(workdir=workdir, batch_size=3, window=16)
    assert lm.batch_size == 4
    texts = documents()
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]))
    for t, ll in zip(texts, got):
        assert -ll == pytest.approx(library_nll(workdir, tmp_path, t, 16), rel=REL_TOL)
        assert math.isfinite(ll)
    prompts = ["def f(x):\n", "import os"]
    gen = lm.generate_until(requests("generate_until", [(p, {"until": ["\n\n"], "max_gen_toks": 8}) for p in prompts]))
    sampler = sampler_lib.load(workdir)
    for p, text in zip(prompts, gen):
        [want], _ = sampler.complete([p.encode("utf-8")], max_new=8, stop=[b"\n\n"])
        assert text == want.decode("utf-8", errors="replace")
