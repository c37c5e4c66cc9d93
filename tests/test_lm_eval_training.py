"""lm-evaluation-harness tasks scored while training (``train.lm_eval_tasks``).

A tiny byte run evaluates a local ``loglikelihood_rolling`` task (a YAML file in a temporary include path over
a local JSON-lines file; every socket connection is refused) at steps 3 and 6. Each logged bits per byte equals
lm-eval's own evaluation (``simple_evaluate`` with ``--model proxy_jax``, what ``python -m proxy_jax.lm_eval``
runs) on the checkpoint of that step, within 1e-4, and the run's losses equal those of the same run without
tasks; a task that does not load (or tasks without evaluations) stops the run before the workdir exists.
"""

import json
import os
import tempfile

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf_datasets_"))

import helpers  # noqa: E402
from proxy_jax import metrics, train  # noqa: E402

pytest.importorskip("lm_eval")

RUN = {"data.source": "dir", "data.val_fraction": 0.2, "data.batch_size": 4, "train.steps": 6,
       "train.checkpoint_every": 3, "train.eval_every": 3, "train.eval_window": 64}
KEY = "eval/lm_eval/local_ppl/bits_per_byte"


def local_task(folder, name="local_ppl", data=None):
    texts = [p.read_text(encoding="utf-8")[:400] for p in helpers.stdlib_paths(60)[50:53]] + ["Café ☕ naïve.\n"]
    if data is None:
        data = str(folder / f"{name}.jsonl")
        with open(data, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}},
            "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text",
            "metric_list": [{"metric": "bits_per_byte"}, {"metric": "byte_perplexity"}]}
    (folder / f"{name}.yaml").write_text(json.dumps(task), encoding="utf-8")
    return str(folder)


def test_tasks_are_scored_at_every_evaluation_as_lm_eval_scores_the_checkpoint(tmp_path, corpus, no_network):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from proxy_jax.evaluation import lm_eval_backend  # noqa: F401 - registers "proxy_jax"

    (tmp_path / "tasks").mkdir()
    include = local_task(tmp_path / "tasks")
    workdir = str(tmp_path / "run")
    config = helpers.tiny_run_config("configs/bytes.py:tiny", **RUN, **{
        "data.path": corpus, "train.lm_eval_tasks": "local_ppl", "train.lm_eval_include_path": include})
    train.train(config, workdir, progress=False)
    logged = {r["step"]: r[KEY] for r in metrics.read_metrics(workdir) if KEY in r}
    assert sorted(logged) == [3, 6]
    assert logged[3] != logged[6]  # the parameters moved between the evaluations
    plain = str(tmp_path / "plain")  # scoring reads the parameters and changes nothing of the run
    train.train(helpers.tiny_run_config("configs/bytes.py:tiny", **RUN, **{"data.path": corpus}), plain,
                progress=False)
    losses = [(r["step"], r["train/loss"]) for r in metrics.read_metrics(workdir) if "train/loss" in r]
    assert losses == [(r["step"], r["train/loss"]) for r in metrics.read_metrics(plain) if "train/loss" in r]
    manager = TaskManager(include_path=include)
    for step in (3, 6):
        out = lm_eval.simple_evaluate(model="proxy_jax", model_args=f"workdir={workdir},step={step}",
                                      tasks=["local_ppl"], task_manager=manager)
        assert logged[step] == pytest.approx(out["results"]["local_ppl"]["bits_per_byte,none"], abs=1e-4)


def test_a_task_that_does_not_load_stops_the_run_before_the_workdir_exists(tmp_path, corpus, no_network):
    (tmp_path / "tasks").mkdir()
    include = local_task(tmp_path / "tasks", "broken", data=str(tmp_path / "missing.jsonl"))
    workdir = str(tmp_path / "never")
    for tasks, expected in (("broken", "does not load"), ("no_such_task", "does not load")):
        config = helpers.tiny_run_config("configs/bytes.py:tiny", **RUN, **{
            "data.path": corpus, "train.lm_eval_tasks": tasks, "train.lm_eval_include_path": include})
        with pytest.raises(ValueError, match=f"train.lm_eval_tasks='{tasks}' {expected}"):
            train.train(config, workdir, progress=False)
    config.train.eval_every = 0
    with pytest.raises(ValueError, match="set --config.train.eval_every > 0"):
        train.train(config, workdir, progress=False)
    assert not os.path.exists(workdir)
