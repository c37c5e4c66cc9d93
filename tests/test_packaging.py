"""The experiment configs ship with the package: a plain ``pip install`` user runs the commands from any
folder, naming a config by its path in the checkout or by its name."""

import glob
import os
import subprocess
import sys
import zipfile

import pytest

import helpers
from proxy_jax import recipes


def test_configs_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in ("proxy_tokens", "proxy_tokens.py", "configs/proxy_tokens.py"):
        path = recipes.config_path(spec)
        assert os.path.isfile(path) and os.path.basename(path) == "proxy_tokens.py", spec
    assert os.path.isfile(recipes.config_path("sweeps/cpu.py"))
    assert recipes.config_path("no_such_config") == "no_such_config"  # left for the one-sentence error
    assert recipes.load_config("bytes:tiny").to_dict() == recipes.load_config(
        str(helpers.ROOT / "configs" / "bytes.py") + ":tiny").to_dict()
    out = subprocess.run([sys.executable, "-m", "proxy_jax.main", "--config=bytes:tiny", "--print_config"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(helpers.ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config.proxy.name='bytes'" in out.stdout


@pytest.mark.slow
def test_the_wheel_carries_the_configs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          str(helpers.ROOT), "-w", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = glob.glob(str(tmp_path / "proxy_jax-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in glob.glob(str(helpers.ROOT / "configs" / "**" / "*.py"), recursive=True):
        rel = os.path.relpath(path, helpers.ROOT / "configs")
        assert f"proxy_jax/configs/{rel}" in names
