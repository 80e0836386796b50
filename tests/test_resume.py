"""Resume from a TRL checkpoint: every plugin's state comes back, final totals equal an uninterrupted run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from helpers import RecordingReward, grpo_trainer
from transformers import TrainerCallback

from lora_rl_plugins.integrations.trl import LoraRLCallback

pytestmark = pytest.mark.slow


def reward_fn(prompts, completions):
    return [float(c[:1] in "0123") + (0.5 if c[1:2] == "9" else 0.0) for c in completions]


class StopAt(TrainerCallback):
    """Ends the run after ``step`` steps, as a crash or a preemption would (after its checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def run(tmp_path, name, *, stop_at=None, resume=False, restore_flag=False):
    trainer = grpo_trainer(
        RecordingReward(reward_fn),
        tmp_path / name,
        steps=6,
        learning_rate=5e-2,
        save_strategy="steps",
        save_steps=3,
        restore_callback_states_from_checkpoint=restore_flag,
    )
    callback = LoraRLCallback(trainer, kl_every=2, kl_budget=10.0, load_entry_points=False)
    trainer.add_callback(callback)
    if stop_at:
        trainer.add_callback(StopAt(stop_at))
    checkpoint = str(tmp_path / name / "out" / "checkpoint-3") if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer, callback


@pytest.mark.parametrize("restore_flag", [False, True])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, restore_flag) -> None:
    _, straight_cb = run(tmp_path, "straight")
    interrupted, _ = run(tmp_path, "resumed", stop_at=3, restore_flag=restore_flag)
    assert interrupted.state.global_step == 3
    saved = json.loads((tmp_path / "resumed" / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    plugin_state = saved["stateful_callbacks"]["LoraRLCheckpointState"]["attributes"]["plugin_state"]
    assert plugin_state["bandwidth"]["steps"] == 3 and plugin_state["kl_monitor"]["batches_seen"] == 3

    resumed, resumed_cb = run(tmp_path, "resumed", resume=True, restore_flag=restore_flag)
    assert resumed.state.global_step == 6
    left = straight_cb.host.get_state()
    right = resumed_cb.host.get_state()
    for plugin in ("bandwidth", "kl_monitor"):
        for key, value in left[plugin].items():
            if isinstance(value, float):
                assert right[plugin][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (plugin, key)
            elif key == "values":
                assert right[plugin][key] == pytest.approx(value, rel=1e-4, abs=1e-8)
            else:
                assert right[plugin][key] == value, (plugin, key)
    last = [e for e in resumed.state.log_history if "bandwidth/bits_total" in e][-1]
    assert last["bandwidth/bits_total"] == pytest.approx(left["bandwidth"]["bits_total"])


def test_resume_after_the_monitor_turned_the_penalty_on_keeps_it(tmp_path) -> None:
    """The KL penalty the monitor switched on (on_budget="penalize") is saved and applied after a resume."""

    def penalized(name, *, stop_at=None, resume=False):
        trainer = grpo_trainer(
            RecordingReward(reward_fn),
            tmp_path / name,
            steps=6,
            learning_rate=5e-2,
            save_strategy="steps",
            save_steps=3,
        )
        callback = LoraRLCallback(
            trainer, kl_every=1, kl_budget=1e-6, on_budget="penalize", kl_penalty_beta=0.1, load_entry_points=False
        )
        trainer.add_callback(callback)
        if stop_at:
            trainer.add_callback(StopAt(stop_at))
        trainer.train(resume_from_checkpoint=str(tmp_path / name / "out" / "checkpoint-3") if resume else None)
        return trainer, callback

    interrupted, _ = penalized("run", stop_at=3)
    assert interrupted.beta == 0.1  # the monitor turned the penalty on before the checkpoint
    saved = json.loads((tmp_path / "run" / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    plugin_state = saved["stateful_callbacks"]["LoraRLCheckpointState"]["attributes"]["plugin_state"]
    assert plugin_state["_trainer"]["kl_beta"] == 0.1
    resumed, _ = penalized("run", resume=True)
    assert resumed.state.global_step == 6
    assert resumed.beta == 0.1  # a fresh trainer starts at beta=0.0: the restored penalty was applied
    kl_logged = [e for e in resumed.state.log_history if "kl" in e and e["step"] > 3]
    assert kl_logged, "TRL computes its KL term again after the resume"
