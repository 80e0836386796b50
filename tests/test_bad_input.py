"""The bad-input matrix: each row, the exact message the user sees.

Rows tested elsewhere: ±inf rewards (test_bandwidth, test_trl_integration), a model without LoRA
(test_trl_integration, test_kl_monitor), rank above max_lora_rank, an illegal max_lora_rank and a
corrupt or missing adapter_config.json (test_vllm_rules), a Lightning step output of the wrong
shape (test_lightning).
"""

from __future__ import annotations

import math

import pytest

from lora_rl_plugins import PluginHost, RolloutShapeError, RolloutsScored, StepEnded, make_plugin_manager
from lora_rl_plugins.bandwidth import BandwidthPlugin
from lora_rl_plugins.bandwidth.plugin import MissingRewardWarning

NAN = math.nan


def host() -> PluginHost:
    return PluginHost(make_plugin_manager({"bandwidth": BandwidthPlugin()}, load_entry_points=False))


def scored(rows, group_size, names=("accuracy", "format")) -> RolloutsScored:
    return RolloutsScored(1, rows, list(names), [1.0] * len(names), group_size)


def test_none_from_one_of_several_reward_functions(caplog) -> None:
    """TRL documents None as "this function does not apply to this sample": an info once, not a warning."""
    import warnings

    h = host()
    rows = [[1.0, 0.5], [None, 0.5], [0.0, 0.5], [NAN, 0.0]]
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="lora_rl_plugins"):
        warnings.simplefilter("error")
        h.on_rollouts_scored(scored(rows, 4))
        h.on_rollouts_scored(scored(rows, 4))  # once per function
    assert [r.getMessage() for r in caplog.records] == [
        (
            "lora_rl_plugins: reward function 'accuracy' returned None/NaN for 2 of 4 rollouts that other reward "
            "functions scored; those rollouts are combined from the other functions alone (TRL sums with nansum). "
            "Return a number for every rollout if that is not intended."
        )
    ]
    assert caplog.records[0].levelname == "INFO"
    h.on_step_end(StepEnded(1))
    assert h.collect_metrics()["bandwidth/missing_rewards"] == 0  # every rollout has a combined reward


def test_all_nan_group() -> None:
    h = host()
    rows = [[NAN, None]] * 4 + [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    with pytest.warns(MissingRewardWarning, match="a group has 0 scored rollout\\(s\\) of 4"):
        h.on_rollouts_scored(scored(rows, 4))
    h.on_step_end(StepEnded(1))
    metrics = h.collect_metrics()
    assert metrics["bandwidth/missing_rewards"] == 4
    assert metrics["bandwidth/small_groups"] == 1
    assert metrics["bandwidth/zero_info_frac"] == 0.5


def test_group_size_one() -> None:
    h = host()
    with pytest.warns(MissingRewardWarning, match="a group has 1 scored rollout\\(s\\) of 1: a group needs at least 2"):
        h.on_rollouts_scored(scored([[1.0], [0.0], [1.0]], 1, names=("accuracy",)))
    h.on_step_end(StepEnded(1))
    metrics = h.collect_metrics()
    assert metrics["bandwidth/bits_step"] == 0 and metrics["bandwidth/small_groups"] == 3


def test_batch_that_does_not_split_into_groups() -> None:
    with pytest.raises(RolloutShapeError) as raised:
        host().on_rollouts_scored(scored([[1.0, 0.0]] * 6, 4))
    assert str(raised.value) == (
        "6 rollouts do not split into groups of 4 generations: the batch must hold whole groups "
        "(a multiple of num_generations=4)"
    )


def test_rewards_of_the_wrong_length() -> None:
    with pytest.raises(RolloutShapeError) as raised:
        host().on_rollouts_scored(scored([[1.0, 0.0], [1.0], [0.0, 0.0], [1.0, 1.0]], 4))
    assert str(raised.value) == (
        "rollout 1 has 1 reward values but there are 2 reward functions (accuracy, format); every rollout needs "
        "one value (or None) per function"
    )


# -- the same rows in TRL: TRL's own checks speak first, and they are clear --------------------------
trl = pytest.importorskip("trl")


def test_trl_refuses_group_size_one_and_indivisible_batches(tmp_path) -> None:
    from trl import GRPOConfig

    with pytest.raises(ValueError, match="GRPO requires at least 2 generations per prompt"):
        GRPOConfig(output_dir=str(tmp_path), num_generations=1, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match=r"generation_batch_size \(6\) must be divisible by num_generations \(4\)"):
        GRPOConfig(
            output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=4, use_cpu=True, report_to=[]
        )


@pytest.mark.slow
def test_trl_reward_function_of_the_wrong_length(tmp_path) -> None:
    from helpers import grpo_trainer

    from lora_rl_plugins.integrations.trl import LoraRLCallback

    def short(prompts, completions, **_):
        return [0.0] * (len(completions) - 1)

    trainer = grpo_trainer(short, tmp_path, steps=1)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    with pytest.raises(ValueError, match="The reward function 'short' returned 15 rewards, but 16 were expected"):
        trainer.train()


@pytest.mark.slow
def test_trl_none_from_one_of_several_functions_said_once(tmp_path, caplog, recwarn) -> None:
    from helpers import grpo_trainer

    from lora_rl_plugins.integrations.trl import LoraRLCallback

    def sometimes(prompts, completions, **_):
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    def always(prompts, completions, **_):
        return [float(c[:1] == "1") for c in completions]

    trainer = grpo_trainer([sometimes, always], tmp_path, steps=2)
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False))
    with caplog.at_level("INFO", logger="lora_rl_plugins"):
        trainer.train()
    assert not [w for w in recwarn if issubclass(w.category, MissingRewardWarning)]
    messages = [r.getMessage() for r in caplog.records if "returned None/NaN" in r.getMessage()]
    assert len(messages) == 1 and "reward function 'sometimes' returned None/NaN for 8 of 16" in messages[0]


def test_trl_refuses_lora_on_lm_head(tmp_path) -> None:
    """TRL computes log-probs from lm_head.weight directly; a LoRA there would never train. (The
    Lightning reference module allows it, and the KL monitor then reports the single-layer bound.)"""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask

    task = CodebookTask()
    with pytest.raises(ValueError, match="Applying a PEFT adapter to `lm_head` is not supported"):
        GRPOTrainer(
            model=build_tiny_model(),
            processing_class=build_tokenizer(),
            reward_funcs=task.reward,
            args=GRPOConfig(
                output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, use_cpu=True, report_to=[]
            ),
            train_dataset=task.dataset(16),
            peft_config=LoraConfig(r=2, target_modules=["q_proj", "lm_head"]),
        )


@pytest.mark.gpu
def test_quantised_base(tmp_path) -> None:
    """QLoRA (bitsandbytes 4-bit base): capacity from the LoRA matrices, KL through disabled adapters."""
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lora_rl_plugins.demo.model import build_tiny_model
    from lora_rl_plugins.kl.measure import measure_kl
    from lora_rl_plugins.lora.adapters import summarize_adapter

    build_tiny_model(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512).save_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map="cuda"
    )
    model = get_peft_model(prepare_model_for_kbit_training(base), LoraConfig(r=4, target_modules=["q_proj"]))
    summary = summarize_adapter(model)
    assert summary.trainable_params == 2 * 4 * (256 + 256)
    ids = torch.randint(2, 12, (2, 6), device="cuda")
    sums = measure_kl(model, ids, torch.ones_like(ids), torch.ones(2, 3, device="cuda"))
    assert sums.kl == pytest.approx(0.0, abs=1e-6)
