"""A replay of TRL's GRPO configurations (issue 23): each runs twice on the tiny model, without and with
``LoraRLCallback(trainer)`` at its defaults. TRL's own logged metrics must be identical, and this library must
raise nothing and warn nothing (no warning of its classes or from its modules, no WARNING on its logger).

Covered: TRL's loss types, beta > 0, a model without PEFT, several / None-returning / weighted reward functions,
an integer reward with many levels, every ``scale_rewards``, ``normalize_then_sum``, ``num_iterations`` and
``steps_per_generation`` > 1, conversational prompts, an iterable dataset and evaluation during training. Two
steps each (about 2 minutes for the file on 2 shared CPU cores; ``--durations`` shows each case).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import lora_rl_plugins
from lora_rl_plugins.bandwidth.plugin import (
    CapacityWarning,
    ContinuousRewardWarning,
    MissingRewardWarning,
    RewardLevelsWarning,
)
from lora_rl_plugins.integrations.trl import LoraRLCallback
from lora_rl_plugins.kl.monitor import KLBudgetWarning, KLComparabilityWarning
from lora_rl_plugins.learning.plugin import LedgerEvictionWarning, SignalExhaustedWarning

pytestmark = pytest.mark.slow

PACKAGE = str(Path(lora_rl_plugins.__file__).parent)
LIBRARY_WARNINGS = (
    CapacityWarning,
    ContinuousRewardWarning,
    MissingRewardWarning,
    RewardLevelsWarning,
    KLBudgetWarning,
    KLComparabilityWarning,
    LedgerEvictionWarning,
    SignalExhaustedWarning,
)
#: This library's metric prefixes, and TRL's wall-clock metrics (the only ones that may differ between runs).
OURS = ("bandwidth/", "kl_monitor/", "learning/", "plugins/")
CLOCK = (
    "step_time",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
)


def text(completion: Any) -> str:
    """A completion's text, plain or conversational ([{"role": "assistant", "content": ...}])."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def first_char(prompts, completions, **_):
    return [float(text(c)[:1] in "01234") for c in completions]


def char_sum(prompts, completions, **_):  # integer rewards with many levels (like len(), token counts)
    return [float(sum(map(ord, text(c)))) for c in completions]


def sometimes_none(prompts, completions, **_):  # a function that does not score every rollout
    return [None if i % 3 == 0 else float(text(c)[-1:] == "7") for i, c in enumerate(completions)]


CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "loss-grpo": {"loss_type": "grpo"},
    "loss-dr_grpo": {"loss_type": "dr_grpo"},
    "loss-bnpo": {"loss_type": "bnpo"},
    "beta": {"beta": 0.04},
    "no-peft": {"peft": False},
    "several-weighted-none": {"rewards": [first_char, sometimes_none, char_sum], "reward_weights": [1.0, 0.5, 0.01]},
    "integer-reward": {"rewards": [char_sum]},
    "scale-batch": {"scale_rewards": "batch"},
    "scale-none": {"scale_rewards": "none"},
    "normalize_then_sum": {"rewards": [first_char, char_sum], "multi_objective_aggregation": "normalize_then_sum"},
    "num_iterations": {"num_iterations": 2},
    "steps_per_generation": {"steps_per_generation": 2},
    "conversational": {"conversational": True},
    "iterable": {"iterable": True},
    "evaluation": {"evaluation": True, "eval_strategy": "steps", "eval_steps": 2, "per_device_eval_batch_size": 8},
}


def build(tmp_path: Path, case: dict[str, Any]) -> Any:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask

    case = dict(case)
    rewards = case.pop("rewards", [first_char])
    peft, conversational, iterable = (
        case.pop("peft", True),
        case.pop("conversational", False),
        case.pop("iterable", False),
    )
    evaluation = case.pop("evaluation", False)
    tokenizer = build_tokenizer()
    prompts = CodebookTask().prompts(32)
    if conversational:
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    else:
        dataset = Dataset.from_dict({"prompt": prompts})
    if iterable:
        dataset = dataset.to_iterable_dataset()
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        learning_rate=2e-3,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        **case,
    )
    return GRPOTrainer(
        model=build_tiny_model(),
        processing_class=tokenizer,
        reward_funcs=rewards,
        args=args,
        train_dataset=dataset,
        eval_dataset=Dataset.from_dict({"prompt": CodebookTask().prompts(8, seed=1)}) if evaluation else None,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if peft else None,
    )


def trl_metrics(trainer: Any) -> list[dict[str, float]]:
    return [
        {k: v for k, v in entry.items() if not k.startswith(OURS) and k not in CLOCK}
        for entry in trainer.state.log_history
    ]


def same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, LIBRARY_WARNINGS)
        or str(w.filename).startswith(PACKAGE)
        or "lora_rl_plugins" in str(w.message)
    ]


@pytest.mark.parametrize("name", list(CASES))
def test_trl_metrics_identical_and_nothing_warned_at_defaults(tmp_path, caplog, name) -> None:
    plain = build(tmp_path / "plain", CASES[name])
    plain.train()
    trainer = build(tmp_path / "with", CASES[name])
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="lora_rl_plugins"):
        warnings.simplefilter("always")
        trainer.add_callback(LoraRLCallback(trainer))
        trainer.train()
    assert ours(caught) == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("lora_rl_plugins")] == []
    expected, got = trl_metrics(plain), trl_metrics(trainer)
    assert len(expected) == len(got) == 3 + ("eval_loss" in str(expected))  # 2 steps, the summary (, an evaluation)
    for before, after in zip(expected, got, strict=True):
        assert before.keys() == after.keys()
        differing = {k: (before[k], after[k]) for k in before if not same(before[k], after[k])}
        assert differing == {}, differing
    assert any(k.startswith("bandwidth/") for k in trainer.state.log_history[0])  # the callback did run
