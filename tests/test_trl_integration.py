"""Real TRL GRPOTrainer runs on the tiny local model with the callback on."""

from __future__ import annotations

import math
from collections import Counter

import pytest

pytest.importorskip("trl")

from helpers import RecordingReward, grpo_trainer

from lora_rl_plugins.integrations.trl import LoraRLCallback

pytestmark = pytest.mark.slow


def entropy_bits(values) -> float:
    counts = Counter(values)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def recompute(calls, completions, group_size):
    """Independent recomputation of per-step bits/bounds from what the reward function returned
    (one call per generation batch, L inferred as distinct values seen so far)."""
    seen: set[float] = set()
    steps = []
    for rewards, texts in zip(calls, completions, strict=True):
        values = [float("nan") if r is None else float(r) for r in rewards]
        seen |= {v for v in values if not math.isnan(v)}
        levels = len(seen)
        bits = bound = 0.0
        zero = 0
        for g in range(0, len(values), group_size):
            idx = [i for i in range(g, g + group_size) if not math.isnan(values[i])]
            if len(idx) < 2:
                zero += 1
                continue
            group = [values[i] for i in idx]
            distinct = len({texts[i] for i in idx})
            b = distinct * math.log2(levels)
            bits += min(len(group) * entropy_bits(group), b)
            bound += b
            zero += len(set(group)) == 1
        steps.append((bits, bound, zero / (len(values) // group_size)))
    return steps


def logged(trainer, name):
    return [entry[name] for entry in trainer.state.log_history if name in entry and "train_runtime" not in entry]


def first_char_reward(prompts, completions):
    return [float(c[:1] in "01234") for c in completions]


def test_logged_metrics_equal_independent_recomputation(tmp_path) -> None:
    reward = RecordingReward(first_char_reward)
    trainer = grpo_trainer(reward, tmp_path, steps=4)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()

    expected = recompute(reward.calls, reward.completions, group_size=4)
    assert len(reward.calls) == 4
    bits, bounds = logged(trainer, "bandwidth/bits_step"), logged(trainer, "bandwidth/bound_step")
    assert bits == pytest.approx([e[0] for e in expected])
    assert bounds == pytest.approx([e[1] for e in expected])
    assert logged(trainer, "bandwidth/zero_info_frac") == pytest.approx([e[2] for e in expected])
    assert logged(trainer, "bandwidth/bits_total")[-1] == pytest.approx(sum(e[0] for e in expected))
    assert logged(trainer, "bandwidth/bound_total")[-1] == pytest.approx(sum(e[1] for e in expected))
    assert logged(trainer, "bandwidth/bits_per_rollout") == pytest.approx([e[0] / 16 for e in expected])
    # binary rewards, TRL's default settings, every group scored: here TRL's count agrees (README table)
    assert logged(trainer, "bandwidth/zero_info_frac") == pytest.approx(logged(trainer, "frac_reward_zero_std"))

    # capacity from the real adapter: 32 bits x every LoRA parameter
    lora_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert logged(trainer, "bandwidth/capacity_bits")[-1] == 32 * lora_params
    assert logged(trainer, "bandwidth/capacity_used")[-1] == pytest.approx(
        sum(e[0] for e in expected) / (32 * lora_params)
    )
    assert logged(trainer, "bandwidth/missing_rewards")[-1] == 0
    assert logged(trainer, "bandwidth/reward_levels_inferred")[-1] == 1


def test_several_reward_functions_with_weights_and_none(tmp_path) -> None:
    def sometimes_none(prompts, completions):
        return [None if i % 4 == 0 else float(c[:1] == "7") for i, c in enumerate(completions)]

    def always_none_for_first(prompts, completions):
        return [None if i % 8 == 0 else 0.5 for i, _ in enumerate(completions)]

    first, second = RecordingReward(sometimes_none, "acc"), RecordingReward(always_none_for_first, "fmt")
    trainer = grpo_trainer([first, second], tmp_path, steps=2, reward_weights=[1.0, 2.0])
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()
    combined_calls = []
    for a, b in zip(first.calls, second.calls, strict=True):
        row = []
        for x, y in zip(a, b, strict=True):
            scored = [(w, v) for w, v in ((1.0, x), (2.0, y)) if v is not None]
            row.append(sum(w * v for w, v in scored) if scored else None)
        combined_calls.append(row)
    expected = recompute(combined_calls, first.completions, group_size=4)
    assert logged(trainer, "bandwidth/bits_step") == pytest.approx([e[0] for e in expected])
    missing = sum(r is None for row in combined_calls for r in row)
    assert missing == 4  # rows 0 and 8 of each 16-rollout batch: every function returned None
    assert logged(trainer, "bandwidth/missing_rewards")[-1] == missing


@pytest.mark.parametrize(("steps_per_generation", "num_iterations"), [(2, 1), (1, 2), (2, 2)])
def test_each_generation_batch_counted_once(tmp_path, steps_per_generation, num_iterations) -> None:
    reward = RecordingReward(first_char_reward)
    trainer = grpo_trainer(
        reward,
        tmp_path,
        steps=4,
        batch=8,
        steps_per_generation=steps_per_generation,
        num_iterations=num_iterations,
    )
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()
    generations = math.ceil(4 / (steps_per_generation * num_iterations))
    assert len(reward.calls) == generations
    expected = recompute(reward.calls, reward.completions, group_size=4)
    assert logged(trainer, "bandwidth/bits_total")[-1] == pytest.approx(sum(e[0] for e in expected))
    # one value per optimizer step; steps that reuse a buffered generation batch deliver 0 bits
    per_step = logged(trainer, "bandwidth/bits_step")
    assert len(per_step) == 4 and sum(per_step) == pytest.approx(sum(e[0] for e in expected))


def test_model_already_wrapped_by_peft(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model

    model = get_peft_model(
        build_tiny_model(),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=1, peft=False, model=model)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()
    # q_proj 64->64 and v_proj 64->32 (2 KV heads x 16) in 2 layers, r = 2
    expected_params = 2 * 2 * ((64 + 64) + (64 + 32))
    assert logged(trainer, "bandwidth/capacity_bits")[-1] == 32 * expected_params


def test_model_without_lora_reports_bandwidth_but_not_capacity(tmp_path, caplog, recwarn) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=1, peft=False)
    with caplog.at_level("INFO", logger="lora_rl_plugins"):
        trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
        trainer.train()
    # full fine-tuning is a healthy run: one info each for capacity and the KL monitor, no warning
    assert sum("no LoRA adapter" in r.message for r in caplog.records) == 1
    assert sum("KL monitor is off" in r.message for r in caplog.records) == 1
    assert not [w for w in recwarn if "lora_rl_plugins" in str(w.message)]
    entry = trainer.state.log_history[0]
    assert "bandwidth/bits_step" in entry
    assert "bandwidth/capacity_bits" not in entry and "bandwidth/capacity_used" not in entry


def test_infinite_reward_stops_with_the_function_name(tmp_path) -> None:
    from lora_rl_plugins import RewardValueError

    def broken(prompts, completions, **_):
        return [math.inf] + [0.0] * (len(completions) - 1)

    broken.__name__ = "broken_reward"
    trainer = grpo_trainer(broken, tmp_path, steps=1)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    with pytest.raises(RewardValueError, match="'broken_reward' returned inf"):
        trainer.train()


def test_not_a_grpo_trainer_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"needs a trl\.GRPOTrainer"):
        LoraRLCallback(object())


def test_vllm_serving_settings_checked_before_training(tmp_path) -> None:
    from lora_rl_plugins import VLLMLoRAError

    reward = RecordingReward(first_char_reward)
    trainer = grpo_trainer(reward, tmp_path, steps=2)  # LoRA r = 4
    with pytest.raises(VLLMLoRAError, match="LoRA rank 4 \\(r\\) is greater than max_lora_rank 1"):
        LoraRLCallback(trainer, vllm_serving={"max_lora_rank": 1}, load_entry_points=False)  # when built
    assert reward.calls == []  # failed before the first generation

    fits = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=1)
    fits.add_callback(LoraRLCallback(fits, vllm_serving={"max_lora_rank": 8}, load_entry_points=False))
    fits.train()


def test_use_vllm_note_is_given_once(caplog) -> None:
    import logging

    from lora_rl_plugins import PluginHost, RunStarted, make_plugin_manager

    host = PluginHost(make_plugin_manager(load_entry_points=False))
    with caplog.at_level(logging.WARNING, logger="lora_rl_plugins"):
        host.on_run_start(RunStarted("trl", 4, options={"use_vllm": True}))
    assert caplog.text.count("max_lora_rank does not apply") == 1


def test_trl_outside_the_supported_range_or_with_changed_internals_is_refused(tmp_path, monkeypatch) -> None:
    import trl

    from lora_rl_plugins.bridge.trl_contract import (
        SUPPORTED_TRL,
        UnsupportedTRLError,
        check_trl_grpo_trainer,
        trl_contract_problems,
    )

    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=1)
    assert trl_contract_problems(trainer, trl.__version__) == []  # the installed TRL (CI: lowest and newest)
    for version in ("1.5.0", "0.29.1", "2.0.0"):
        with pytest.raises(UnsupportedTRLError, match=rf"supports trl{SUPPORTED_TRL}.*TRL {version} is outside"):
            check_trl_grpo_trainer(trainer, version)
    monkeypatch.setattr(trl, "__version__", "2.1.0")
    with pytest.raises(UnsupportedTRLError, match=r"pip install 'trl>=1\.6,<2'"):
        LoraRLCallback(trainer, load_entry_points=False)
    monkeypatch.undo()
    # a TRL whose internals moved: a wrapped method with other parameters, an attribute gone
    trainer._calculate_rewards = lambda inputs, prompts: None
    del trainer.reward_func_names
    problems = trl_contract_problems(trainer, "1.16.0")
    assert any("_calculate_rewards takes ('inputs', 'prompts')" in p for p in problems), problems
    assert any("'reward_func_names'" in p for p in problems), problems
    with pytest.raises(UnsupportedTRLError, match="reward_func_names"):
        LoraRLCallback(trainer, load_entry_points=False)


def test_quiet_log_line_constants_once_per_step_metrics_every_log(tmp_path, capsys) -> None:
    """TRL's log line carries a per-step metric at every log and a setting or an unchanged total only when it
    changes (constants once, at the start); the run log has them all; the printed live view is short."""
    import json

    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=4)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    trainer.train()
    history = [e for e in trainer.state.log_history if "train_runtime" not in e]
    assert len(history) == 4  # logging_steps=1
    assert all("bandwidth/bits_step" in e for e in history)  # per-step: every log
    for constant in ("bandwidth/adapter_rank", "bandwidth/params_per_rank", "bandwidth/capacity_bits"):
        assert [constant in e for e in history] == [True, False, False, False], constant
    records = [json.loads(line) for line in (tmp_path / "out" / "lora_rl_metrics.jsonl").read_text().splitlines()]
    assert [r["value"] for r in records if r["name"] == "bandwidth/adapter_rank"] == [4.0]  # once, in the run log
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lora-rl step")]
    assert printed and all(len(line) <= 100 for line in printed), printed


def _plugin_views(trainer):
    """What a reader of the log knows at each log line: every plugin metric's latest logged value (a value that
    did not change since it was last logged is left out of a line: the quiet console)."""
    prefixes = ("bandwidth/", "kl_monitor/", "learning/")
    known, views = {}, []
    for entry in trainer.state.log_history:
        if "train_runtime" not in entry:
            known.update({k: v for k, v in entry.items() if k.startswith(prefixes)})
            views.append(dict(known))
    return views


def test_metrics_are_collected_at_logging_steps_only_and_the_log_is_the_same(tmp_path, monkeypatch) -> None:
    """With TRL's logging every 3 steps the plugins are collected at steps 3, 6 and the last (7), not at every
    step, and every log line holds the same plugin values as a run collected at every step (same seed; the KL
    measured at every batch, so a window holds 3 measurements averaged by the monitor instead of by TRL; the
    bandwidth's per-step values averaged by the plugin)."""
    import lora_rl_plugins.integrations.trl as trl_integration

    def run(path, every_step):
        if every_step:
            monkeypatch.setattr(trl_integration, "logs_after_step", lambda args, control: True)
        trainer = grpo_trainer(RecordingReward(first_char_reward), path, steps=7, logging_steps=3)
        callback = LoraRLCallback(trainer, load_entry_points=False, kl_every=1)
        collected = []
        inner = callback.host.collect_metrics

        def collect():
            collected.append(trainer.state.global_step)
            return inner()

        callback.host.collect_metrics = collect
        trainer.add_callback(callback)
        trainer.train()
        monkeypatch.undo()
        return collected, _plugin_views(trainer)

    at_logs, lines = run(tmp_path / "logs", every_step=False)
    every, reference = run(tmp_path / "every", every_step=True)
    assert at_logs == [3, 6, 7] and every == list(range(1, 8))
    assert len(lines) == 2 and lines[0]["kl_monitor/kl_mean"] > 0
    assert lines == reference  # the same floats: the plugins average as TRL averages (plugin.metrics.window_mean)
