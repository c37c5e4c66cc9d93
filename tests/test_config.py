"""Configs that mean what they say: ``train.steps`` rescales the recipe's phases and cadences, and a key that is
not in the schema is refused wherever a config is built (Python, overrides, sweep files, the command line)."""

import json
import os
import subprocess
import sys

import pytest

from proxy_jax import config as config_lib, recipes, train, workdir as workdir_lib
from proxy_jax.data import schedule
from proxy_jax.scaling import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "configs/proxy_tokens.py:tiny")


def scaled(value, steps, old, *, cadence):
    """The rule, written again: value x steps/old rounded; cadences and the warm-up at least 1."""
    if value <= 0:
        return value
    out = int(round(value * steps / old))
    return max(1, out) if cadence else out


@pytest.mark.parametrize("steps", [4, 60, 333, 5000])
def test_train_steps_rescales_what_the_recipe_derived_from_it(steps):
    recipe = recipes.load_config(SPEC)
    got = recipes.load_config(SPEC, **{"train.steps": steps})
    old = recipe.train.steps
    for dotted in recipes.STEP_SCALED:
        group, key = dotted.split(".")
        want = scaled(recipe[group][key], steps, old, cadence=group != "mix")
        if dotted == "opt.warmup_steps":
            want = max(1, min(want, steps - 1))
        assert got[group][key] == want, dotted
    # The run leaves the translation warm-up at the same fraction of its steps as the recipe does.
    assert got.mix.warmup_steps / steps == pytest.approx(recipe.mix.warmup_steps / old, abs=1 / steps)
    assert schedule.rates_at([steps - 1], got.mix)[0] == pytest.approx(recipe.mix.rate_peak)
    assert got.train.eval_every == steps  # one evaluation, at the end, as the recipe says


def test_keys_set_with_train_steps_are_kept():
    got = recipes.load_config(SPEC, **{"train.steps": 60, "train.checkpoint_every": 7, "mix.warmup_steps": 30})
    assert (got.train.checkpoint_every, got.mix.warmup_steps) == (7, 30)
    assert got.mix.steady_steps == 48  # the others still follow
    plain = recipes.load_config(SPEC, **{"data.seq_len": 64})  # no train.steps: nothing moves
    assert plain.mix.warmup_steps == recipes.load_config(SPEC).mix.warmup_steps


def test_a_resume_with_other_steps_keeps_the_saved_phases(tmp_path):
    wd = str(tmp_path)
    first = recipes.load_config(SPEC, **{"train.steps": 60})
    workdir_lib.save_config(first, wd)
    os.makedirs(os.path.join(wd, "checkpoints", "60"))
    longer = recipes.load_config(SPEC, **{"train.steps": 120})
    train._keep_saved_phases(longer, wd)
    assert (longer.mix.warmup_steps, longer.mix.steady_steps) == (first.mix.warmup_steps, first.mix.steady_steps)
    assert longer.train.checkpoint_every == 2 * first.train.checkpoint_every  # resumable: follows the steps
    assert set(workdir_lib.check_resume(longer, wd)) <= {"train.steps", "train.checkpoint_every",
                                                         "train.eval_every", "opt.warmup_steps"}


@pytest.mark.parametrize("build", [
    lambda c: setattr(c.train, "stepz", 5),
    lambda c: c.model.__setitem__("num_layer", 1),
    lambda c: config_lib.override(c, **{"train.stepz": 5}),
    lambda c: recipes.load_config(SPEC, **{"train.stepz": 5}),
])
def test_a_misspelt_key_is_refused_in_python_with_a_suggestion(build):
    config = recipes.load_config(SPEC)
    with pytest.raises((AttributeError, KeyError)) as e:
        build(config)
    message = e.value.args[0]
    assert "does not exist; did you mean" in message and "\n" not in message
    assert "'train.steps'" in message or "'model.num_layers'" in message
    assert "stepz" not in config.train and "num_layer" not in config.model


def test_a_misspelt_key_in_a_sweep_file_is_refused(tmp_path):
    path = tmp_path / "sweep.py"
    path.write_text(
        "def get_config(preset=''):\n"
        "    return {'preset': 'tiny', 'sizes': {'s': {'d_model': 64, 'num_layer': 1}},\n"
        "            'methods': {'bytes': {'config': 'configs/bytes.py', 'overrides': {'opt.lrr': 1.0}}},\n"
        "            'grids': [{'methods': ['bytes'], 'sizes': ['s'], 'budgets': [1e9]}]}\n")
    with pytest.raises(ValueError, match=r"size 's': Config key 'model.num_layer' does not exist; did you mean "
                                         r"'model.num_layers'\?"):
        sweep_lib.load_sweep(str(path))
    path.write_text(path.read_text().replace("'num_layer'", "'num_layers'"))
    with pytest.raises(ValueError, match=r"method 'bytes' overrides: Config key 'opt.lrr' does not exist; did you "
                                         r"mean 'opt.lr'\?"):
        sweep_lib.load_sweep(str(path))


def cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "proxy_jax.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_misspelt_key_on_the_command_line_is_one_sentence(tmp_path):
    out = cli("--config=configs/bytes.py:tiny", "--config.train.stepz=5", f"--workdir={tmp_path}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "stepz" in out.stderr and "Did you mean" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_steps_on_the_command_line_rescales_the_recipe(tmp_path):
    wd = tmp_path / "run"
    out = cli("--config=configs/bytes.py:tiny", f"--workdir={wd}", "--config.train.steps=3", "--config.data.seq_len=32",
              "--config.data.batch_size=4", "--config.model.num_layers=1", "--config.train.sample_prompt=",
              "--config.train.tensorboard=False", "--config.train.eval_every=0")
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((wd / "config.json").read_text())
    want = recipes.load_config(os.path.join(ROOT, "configs/bytes.py:tiny"), **{"train.steps": 3})
    assert saved["mix"]["steady_steps"] == want.mix.steady_steps == 3
    assert saved["train"]["checkpoint_every"] == want.train.checkpoint_every == 1
    assert saved["opt"]["warmup_steps"] == want.opt.warmup_steps == 1
    assert saved["train"]["eval_every"] == 0  # set on the command line: kept
