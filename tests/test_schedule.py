"""The rate/mode schedule: values at every phase boundary, vectorised form, validation."""

import numpy as np
import pytest

from helpers import mix_config
from proxy_jax.data import schedule


def _mix(w=10, t=20, d=8, r0=0.4, rp=0.9, rf=0.2):
    return mix_config(w, t, d, (r0, rp, rf), ("translation_random", "parallel_raw_first", "sentinel"))


def test_phase_boundaries():
    mix = _mix()
    w, t, d = 10, 20, 8
    expected = {
        0: (0.4, "translation_random"),
        w - 1: (0.4 + 0.5 * (w - 1) / w, "translation_random"),
        w: (0.9, "parallel_raw_first"),
        w + t - 1: (0.9, "parallel_raw_first"),
        w + t: (0.9, "parallel_raw_first"),  # decay starts at rp
        w + t + 1: (0.9 + (0.2 - 0.9) / d, "parallel_raw_first"),
        w + t + d - 1: (0.9 + (0.2 - 0.9) * (d - 1) / d, "parallel_raw_first"),
        w + t + d: (0.2, "sentinel"),
        10**9: (0.2, "sentinel"),
    }
    for step, (rate, mode) in expected.items():
        got_rate, got_mode = schedule.schedule_at(step, mix)
        assert got_mode == mode, step
        assert got_rate == pytest.approx(rate, abs=1e-12), step


def test_warmup_is_linear_and_monotone():
    mix = _mix(w=100, t=0, d=0, r0=0.1, rp=0.7, rf=0.7)
    rates = np.array([schedule.schedule_at(c, mix)[0] for c in range(100)])
    np.testing.assert_allclose(np.diff(rates), 0.6 / 100, atol=1e-12)
    assert schedule.schedule_at(100, mix) == (0.7, "sentinel")  # T = D = 0: straight to the final phase


def test_zero_length_phases():
    mix = _mix(w=0, t=0, d=0, rf=0.3)
    assert schedule.schedule_at(0, mix) == (0.3, "sentinel")
    mix = _mix(w=0, t=5, d=0)
    assert schedule.schedule_at(0, mix) == (0.9, "parallel_raw_first")
    assert schedule.schedule_at(5, mix) == (0.2, "sentinel")


def test_vectorised_matches_scalar():
    mix = _mix()
    steps = np.arange(0, 60)
    expected = [schedule.schedule_at(int(c), mix)[0] for c in steps]
    np.testing.assert_allclose(schedule.rates_at(steps, mix), expected, atol=1e-12)


def test_max_rate_and_modes_used():
    assert schedule.max_rate(_mix(r0=0.0, rp=0.0, rf=0.0)) == 0.0
    assert schedule.max_rate(_mix(w=0, t=0, d=0, r0=0.8, rp=0.9, rf=0.1)) == 0.1  # only rf is ever used
    assert schedule.modes_used(_mix(w=0, t=0, d=0)) == {"sentinel"}
    assert schedule.modes_used(_mix()) == {"translation_random", "parallel_raw_first", "sentinel"}


@pytest.mark.parametrize("key,value,needle", [
    ("rate_peak", 1.5, "rate_peak=1.5"),
    ("rate_init", -0.1, "rate_init=-0.1"),
    ("warmup_steps", -3, "warmup_steps=-3"),
    ("mode_steady", "sentinal", "'sentinal'"),
])
def test_validation_names_the_bad_value(key, value, needle):
    mix = _mix()
    mix[key] = value
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        schedule.validate_mix(mix)


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="step=-1"):
        schedule.schedule_at(-1, _mix())
