"""The KL values in one TRL log line are comparable: TRL's `kl` is its logging window's mean of per-step k3, and
every kl_monitor/* measured value is the mean of the measurements taken within the same window (averaged by the
monitor, which is collected only when TRL logs; a window without a measurement has none)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from helpers import RecordingReward, grpo_trainer

from lora_rl_plugins.integrations.trl import LoraRLCallback

pytestmark = pytest.mark.slow


def first_char_reward(prompts, completions):
    return [float(c[:1] in "01234") for c in completions]


def lines(trainer):
    return [e for e in trainer.state.log_history if "train_runtime" not in e]


def test_monitor_values_are_window_means_like_trls_kl(tmp_path) -> None:
    # logging_steps=3, a measurement at every generation batch on all 16 sequences: the window's k3_mean is the
    # mean of 3 measurements, each TRL's per-step k3 on the same tokens, so it equals TRL's window-mean `kl`
    trainer = grpo_trainer(
        RecordingReward(first_char_reward),
        tmp_path,
        steps=6,
        beta=0.04,
        learning_rate=5e-2,
        bf16=False,
        logging_steps=3,
    )
    measured: list[dict[str, float]] = []
    callback = LoraRLCallback(trainer, kl_every=1, kl_max_sequences=64, load_entry_points=False, live_view=False)
    monitor = callback.host.plugin("kl_monitor")
    inner = monitor.measure

    def measure(sample):
        inner(sample)
        measured.append(dict(monitor.values))

    monitor.measure = measure
    trainer.add_callback(callback)
    trainer.train()
    logged = lines(trainer)
    assert len(logged) == 2 and len(measured) == 6
    for window, entry in enumerate(logged):
        own = measured[3 * window : 3 * window + 3]
        for name in ("kl_mean", "k3_mean", "kl_max", "certificate", "k3_stderr"):
            assert entry[f"kl_monitor/{name}"] == pytest.approx(sum(m[name] for m in own) / 3, rel=1e-9)
        assert entry["kl_monitor/k3_mean"] == pytest.approx(entry["kl"], rel=1e-4, abs=1e-7)  # comparable
        assert entry["kl_monitor/measured_step"] == own[-1]["measured_step"]


def test_a_window_without_a_measurement_has_no_monitor_values(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=4)
    trainer.add_callback(LoraRLCallback(trainer, kl_every=3, load_entry_points=False, live_view=False))
    trainer.train()
    has = ["kl_monitor/kl_mean" in e for e in lines(trainer)]
    assert has == [True, False, False, True]  # measured at generation batches 1 and 4
    assert [e["kl_monitor/measured_step"] for e in lines(trainer) if "kl_monitor/measured_step" in e] == [1, 4]


def test_window_mean_is_trls_average_of_a_logging_window() -> None:
    import math

    from lora_rl_plugins.plugin.metrics import window_mean

    values = [0.1, 0.2, math.nan, 0.7]
    assert window_mean(values) == (0.1 + 0.2 + 0.7) / 3  # TRL: sum(valid) / len(valid), the same floats
    assert math.isnan(window_mean([math.nan])) and math.isnan(window_mean([]))
