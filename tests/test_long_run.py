"""Over 10,000 simulated steps the plugins' state and memory stay bounded (no per-step growth)."""

from __future__ import annotations

import json
import random
import time
import tracemalloc

import pytest

from lora_rl_plugins import (
    AdaptedMatrix,
    AdapterReady,
    AdapterSummary,
    PluginHost,
    RolloutsScored,
    RunStarted,
    StepEnded,
    hookimpl,
    make_plugin_manager,
)
from lora_rl_plugins.bridge.builtin import default_builtins

pytestmark = pytest.mark.slow


class Slow:
    """A third-party plugin that takes 2 ms per step: it must show in its timing metric."""

    @hookimpl
    def on_step_end(self, step):
        time.sleep(0.002)


def test_ten_thousand_steps_stay_bounded() -> None:
    import warnings

    host = PluginHost(make_plugin_manager(default_builtins(), load_entry_points=False))
    host.on_run_start(RunStarted("test", 8, total_steps=10_000))
    adapter = AdapterSummary((AdaptedMatrix("q", 64, 64, 8, 2.0),))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the KL monitor warns it is off without a model; capacity warnings
        host.on_adapter_ready(AdapterReady(adapter))
    rng = random.Random(0)
    sizes, memory = {}, {}
    tracemalloc.start()
    for step in range(1, 10_001):
        # continuous rewards: the distinct-level set is the only thing that could grow; it is capped
        rewards = [[round(rng.random(), 3) if rng.random() > 0.05 else None] for _ in range(32)]
        completions = [str(rng.randrange(50)) for _ in range(32)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            host.on_rollouts_scored(RolloutsScored(step, rewards, ["r"], [1.0], 8, completions))
            host.on_step_end(StepEnded(step, 10_000))
        metrics = host.collect_metrics()
        if step in (2_000, 10_000):
            sizes[step] = len(json.dumps(host.get_state()))
            memory[step] = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert sizes[10_000] <= sizes[2_000] * 1.01
    assert memory[10_000] - memory[2_000] < 256 * 1024
    assert metrics["bandwidth/reward_levels"] == 1001  # 0.000 ... 1.000
    assert len(host.plugin("bandwidth").warned) <= 5


def test_slow_plugin_shows_in_its_timing_metric() -> None:
    host = PluginHost(make_plugin_manager(extra=[Slow()], load_entry_points=False))
    for step in range(1, 6):
        host.on_step_end(StepEnded(step))
    metrics = host.collect_metrics()
    assert metrics["plugins/Slow/ms_per_step"] >= 2.0  # named after the plugin's class
    assert metrics["plugins/bandwidth/ms_per_step"] < metrics["plugins/Slow/ms_per_step"]
