"""Which TRL trainers the callback accepts: GRPOTrainer and subclasses that keep its advantages (TRL's GMPOTrainer),
by class; RLOOTrainer and the other online trainers that look alike are refused at construction, saying why."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from helpers import RecordingReward, grpo_trainer

from lora_rl_plugins.bridge.trl_contract import check_trainer_class
from lora_rl_plugins.integrations.trl import LoraRLCallback


def first_char_reward(prompts, completions):
    return [float(c[:1] in "01234") for c in completions]


def test_not_a_trainer_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"needs a trl\.GRPOTrainer .* got object\. Train with GRPOTrainer"):
        LoraRLCallback(object())


def test_rloo_is_refused_with_the_reason(tmp_path) -> None:
    """A real RLOOTrainer: it has _calculate_rewards and num_generations (the old duck-typed check took it), but
    its advantages are KL-shaped, leave-one-out and may be batch-normalised (TRL 1.16 rloo_trainer.py)."""
    from peft import LoraConfig
    from trl import RLOOConfig, RLOOTrainer

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask

    args = RLOOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=2,
        max_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = RLOOTrainer(
        model=build_tiny_model(),
        reward_funcs=first_char_reward,
        args=args,
        train_dataset=CodebookTask().dataset(16),
        processing_class=build_tokenizer(),
        peft_config=LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert hasattr(trainer, "_calculate_rewards") and hasattr(trainer, "num_generations")
    with pytest.raises(TypeError) as error:
        LoraRLCallback(trainer, load_entry_points=False)
    message = str(error.value)
    assert "got RLOOTrainer: RLOO subtracts beta" in message
    assert "leave-one-out baseline" in message and "normalize_advantages=True" in message
    assert "not GRPO's k3" in message and "leave the callback out" in message


@pytest.mark.parametrize("name", ["OnlineDPOTrainer", "SDPOTrainer", "A2POTrainer"])
def test_other_online_trainers_are_refused_by_class(name) -> None:
    import importlib

    module = {
        "OnlineDPOTrainer": "trl.experimental.online_dpo",
        "SDPOTrainer": "trl.experimental.sdpo",
        "A2POTrainer": "trl.experimental.a2po",
    }[name]
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(TypeError, match=f"got {name}: "):
        LoraRLCallback(object.__new__(cls), load_entry_points=False)  # refused before anything is read


def test_subclasses_keep_or_replace_the_advantages() -> None:
    from trl import GRPOTrainer

    class Logging(GRPOTrainer):  # wraps TRL's computation: keeps its advantages
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            return output

    class Replaced(GRPOTrainer):  # computes its own: refused
        def _generate_and_score_completions(self, inputs):
            return {"advantages": inputs}

    class LossOnly(GRPOTrainer):  # like GMPO: another loss, the same advantages
        def _compute_loss(self, model, inputs):
            return 0

    for cls in (Logging, LossOnly, GRPOTrainer):
        check_trainer_class(object.__new__(cls), (GRPOTrainer,))
    with pytest.raises(TypeError, match=r"Replaced overrides GRPOTrainer\._generate_and_score_completions"):
        check_trainer_class(object.__new__(Replaced), (GRPOTrainer,))
    with pytest.raises(TypeError, match="Replaced overrides"):
        LoraRLCallback(object.__new__(Replaced), load_entry_points=False)


def test_gmpo_is_accepted_and_its_advantages_are_grpos(tmp_path) -> None:
    """TRL's GMPOTrainer changes only the loss: accepted by class, and the accounting's zero-information groups are
    the groups whose advantages GMPO computed all zero (binary reward, TRL's defaults)."""
    gmpo = pytest.importorskip("trl.experimental.gmpo")
    reward = RecordingReward(first_char_reward)
    base = grpo_trainer(reward, tmp_path, steps=2)
    trainer = gmpo.GMPOTrainer(
        model=base.model,
        reward_funcs=reward,
        args=base.args,
        train_dataset=base.train_dataset,
        processing_class=base.processing_class,
    )
    advantages = []
    inner = trainer._generate_and_score_completions

    def record(inputs):
        output = inner(inputs)
        advantages.append(output["advantages"].tolist())
        return output

    trainer._generate_and_score_completions = record
    trainer.add_callback(LoraRLCallback(trainer, load_entry_points=False, live_view=False))
    trainer.train()
    logged = [e["bandwidth/zero_info_frac"] for e in trainer.state.log_history if "bandwidth/zero_info_frac" in e]
    k = trainer.num_generations
    expected = []
    for batch in advantages:
        groups = [batch[g : g + k] for g in range(0, len(batch), k)]
        expected.append(sum(all(a == 0 for a in group) for group in groups) / len(groups))
    assert logged == pytest.approx(expected) and len(logged) == 2
