"""``launch/bench_neural.py --device`` runs the accelerator code path unchanged (here the default device is
the CPU): it codes real held-out text, compiles every shape in its untimed first run, and reports a
throughput and a floor."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_bench_neural_device_path_runs_on_the_default_device():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # --device: no platform forced
    r = subprocess.run([sys.executable, "launch/bench_neural.py", "--device", "--preset", "tiny", "--bytes", "2000",
                        "--tile_positions", "256", "--chunk_bytes", "64", "--batch_rows", "4", "--throughput_only"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["bytes"] == 2000 and out["tile_positions"] == 256
    assert out["compiles_timed_run"] == 0  # the timed run reuses every compiled shape
    assert out["segments"] >= out["documents"] >= 1
    assert 0 < out["encode_bytes_per_s"] <= min(out["entropy_pass_bytes_per_s"], out["coding_pass_bytes_per_s"])
    assert out["flop_floor_bytes_per_s"] == out["matmul_flops_per_s"] / out["m1_flops_per_byte"]
    assert out["ideal_bits_per_byte_segment_context"] is None  # --throughput_only skipped the analysis
