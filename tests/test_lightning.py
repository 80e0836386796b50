"""The Lightning integration with the reference GRPO module of examples/lightning_grpo.py (real
Lightning, PEFT and transformers on the tiny local model)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

L = pytest.importorskip("lightning")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import lightning_grpo  # noqa: E402

from lora_rl_plugins.integrations.lightning import GRPOOutputError, LoraRLCallback  # noqa: E402

pytestmark = pytest.mark.slow


def trainer_for(callback, steps, tmp_path, **kwargs):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        log_every_n_steps=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def read_metrics(trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def column(rows, name) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


class Recording(lightning_grpo.GRPOModule):
    """The reference module, remembering the rewards it returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.returned: list[tuple[list[list[float]], list[str]]] = []

    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.returned.append((output["rewards"].tolist(), list(output["completions"])))
        return output


def test_csv_logger_receives_bandwidth_and_kl_metrics(tmp_path) -> None:
    module, prompts, callback = lightning_grpo.build(steps=6, kl_free=True, beta=0.0)
    module.__class__ = Recording
    module.returned = []
    callback = LoraRLCallback(kl_free=True, kl_every=2, load_entry_points=False)
    trainer = trainer_for(callback, 6, tmp_path, enable_checkpointing=False)
    trainer.fit(module, prompts)
    rows = read_metrics(trainer)
    bits = column(rows, "bandwidth/bits_step")
    assert len(bits) == 6
    # independent recomputation of the total from what the module returned: L = distinct rewards
    # seen so far, D = distinct completions in the group, estimate min(K·h(p), D·log2 L)
    expected, seen = 0.0, set()
    for step_rewards, texts in module.returned:
        seen |= {r for group in step_rewards for r in group}
        for g, group in enumerate(step_rewards):
            k = len(group)
            p = sum(group) / k
            h = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
            distinct = len(set(texts[g * k : (g + 1) * k]))
            expected += min(k * h, distinct * math.log2(len(seen)))
    assert column(rows, "bandwidth/bits_total")[-1] == pytest.approx(expected)
    assert column(rows, "kl_monitor/kl_mean")  # the guard rail measured
    assert column(rows, "kl_monitor/measured_step")[-1] == 5
    assert column(rows, "bandwidth/capacity_bits")[-1] > 0


class Interrupt(L.Callback):
    """Ends the run after ``at`` optimizer steps, as a crash or a preemption would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.at:
            trainer.should_stop = True


def test_resumed_run_gives_the_same_totals(tmp_path) -> None:
    def run(extra_callbacks=(), ckpt_path=None, root=tmp_path):
        module, prompts, _ = lightning_grpo.build(steps=8, kl_free=True, beta=0.0)
        callback = LoraRLCallback(kl_free=True, kl_every=3, load_entry_points=False)
        trainer = L.Trainer(
            max_steps=8,
            accelerator="cpu",
            devices=1,
            logger=False,
            default_root_dir=root,  # no logger: the run log goes here
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[callback, *extra_callbacks],
            enable_checkpointing=bool(extra_callbacks),
        )
        trainer.fit(module, prompts, ckpt_path=ckpt_path)
        return callback

    straight = run(root=tmp_path / "straight")
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    run([checkpoint, Interrupt(4)])
    resumed = run(ckpt_path=str(tmp_path / "epoch=0-step=4.ckpt"))
    left = straight.host.plugin("bandwidth").get_state()
    right = resumed.host.plugin("bandwidth").get_state()
    assert right["steps"] == 8
    assert right["bits_total"] == pytest.approx(left["bits_total"])
    assert right["bound_total"] == pytest.approx(left["bound_total"])
    assert right["rollouts_total"] == left["rollouts_total"]
    assert right["seen_levels"] == left["seen_levels"]
    kl_left = straight.host.plugin("kl_monitor").get_state()
    kl_right = resumed.host.plugin("kl_monitor").get_state()
    assert kl_right["batches_seen"] == kl_left["batches_seen"] == 8
    assert kl_right["values"]["kl_mean"] == pytest.approx(kl_left["values"]["kl_mean"], rel=1e-4)
    # the run log of the interrupted and resumed run: every step once, the totals of the straight run
    from lora_rl_plugins.report import load_run

    resumed_log, straight_log = load_run(tmp_path / "lora_rl_metrics.jsonl"), load_run(tmp_path / "straight")
    assert resumed_log.steps("bandwidth/bits_step") == list(range(1, 9))
    assert resumed_log.last("bandwidth/bits_total") == pytest.approx(straight_log.last("bandwidth/bits_total"))


def test_kl_free_module_asks_and_penalty_switches_reference_on(tmp_path) -> None:
    module, prompts, _ = lightning_grpo.build(steps=8, kl_free=True, beta=0.0)
    callback = LoraRLCallback(
        kl_free=True, kl_every=1, kl_budget=1e-6, on_budget="penalize", kl_penalty_beta=0.05, load_entry_points=False
    )
    assert callback.kl_beta(0.0) == 0.0
    with pytest.raises(ValueError, match=r"kl_free=True, but the module uses beta=0\.1"):
        callback.kl_beta(0.1)
    trainer = trainer_for(callback, 8, tmp_path, enable_checkpointing=False)
    trainer.fit(module, prompts)
    assert callback.kl_beta(0.0) == 0.05
    betas = column(read_metrics(trainer), "kl_beta")
    assert betas[0] == 0.0 and betas[-1] == pytest.approx(0.05)


def test_budget_stop(tmp_path) -> None:
    module, prompts, _ = lightning_grpo.build(steps=20, kl_free=True, beta=0.0)
    callback = LoraRLCallback(kl_every=1, kl_budget=1e-6, on_budget="stop", load_entry_points=False)
    trainer = trainer_for(callback, 20, tmp_path, enable_checkpointing=False)
    trainer.fit(module, prompts)
    assert trainer.global_step < 20


class Broken(lightning_grpo.GRPOModule):
    def __init__(self, *args, output=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.output = output

    def training_step(self, batch, batch_idx):
        real = super().training_step(batch, batch_idx)
        return self.output(real)


@pytest.mark.parametrize(
    ("make_output", "message"),
    [
        # Lightning turns a bare loss into {"loss": loss} before callbacks see it
        (lambda real: real["loss"], r"has no 'rewards' \(keys: \['loss'\]\)"),
        (lambda real: {"loss": real["loss"]}, "has no 'rewards'"),
        (lambda real: {**real, "rewards": real["rewards"].reshape(-1)}, r"'rewards' has shape \(32,\); expected"),
        (lambda real: {**real, "rewards": [[1.0, 0.0], [1.0]]}, "ragged rows"),
        (lambda real: {**real, "completions": real["completions"][:-1]}, "'completions' has 31 entries for 32"),
        (lambda real: {**real, "completion_mask": real["completion_mask"][:, :1]}, "do not line up"),
        (lambda real: {k: v for k, v in real.items() if k != "prompt_mask"}, "'prompt_mask' is needed"),
    ],
)
def test_wrong_step_output_is_a_clear_error(tmp_path, make_output, message) -> None:
    module, prompts, _ = lightning_grpo.build(steps=1, kl_free=True, beta=0.0)
    broken = Broken(module.model, module.tokenizer, module.reward_fn, output=make_output)
    trainer = trainer_for(LoraRLCallback(load_entry_points=False), 1, tmp_path, enable_checkpointing=False)
    with pytest.raises(GRPOOutputError, match=message):
        trainer.fit(broken, prompts)


def test_example_runs_and_reward_rises(tmp_path, capsys) -> None:
    trainer = lightning_grpo.main(["--steps", "60", "--kl-free", "--logdir", str(tmp_path)])
    rewards = column(read_metrics(trainer), "reward")
    assert len(rewards) == 60
    assert sum(rewards[-15:]) / 15 > sum(rewards[:15]) / 15 + 0.1
    assert "reward" in capsys.readouterr().out


def test_informative_sampling_ledger_survives_resume(tmp_path) -> None:
    def run(extra_callbacks=(), ckpt_path=None):
        module, prompts, callback = lightning_grpo.build(
            steps=8, kl_free=True, beta=0.0, sampling="informative", skip_after=1, revisit=0.0, skip_unsolved=True
        )
        trainer = L.Trainer(
            max_steps=8,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[callback, *extra_callbacks],
            enable_checkpointing=bool(extra_callbacks),
        )
        trainer.fit(module, prompts, ckpt_path=ckpt_path)
        return callback

    straight = run()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    run([checkpoint, Interrupt(4)])
    resumed = run(ckpt_path=str(tmp_path / "epoch=0-step=4.ckpt"))
    left, right = (c.host.plugin("learning") for c in (straight, resumed))
    assert right.ledger.get_state() == left.ledger.get_state()
    assert right.skipped_prompts == left.skipped_prompts > 0
    assert left.seconds_per_rollout > 0  # the module reports its generation time
    assert sum(e.visits for e in left.ledger.entries.values()) == 8 * 4
    probes = straight.host.plugin("learning_probes")  # the probes are their own plugin
    assert probes.values["absorbed_bits"] <= probes.values["answer_bits"]


def test_after_generation_filter_refills_zero_signal_groups(tmp_path) -> None:
    module, prompts, callback = lightning_grpo.build(steps=6, kl_free=True, beta=0.0, sampling="filter")
    trainer = trainer_for(callback, 6, tmp_path)
    trainer.fit(module, prompts)
    assert module.rollouts_generated > 6 * 4 * module.generations  # refills generated more
    ledger = callback.host.plugin("learning").ledger
    assert sum(e.visits for e in ledger.entries.values()) == 6 * 4  # batches stay full: 4 groups a step
    rows = read_metrics(trainer)
    assert column(rows, "rollouts_generated")[-1] == module.rollouts_generated


def test_module_declares_its_advantage_settings_and_zero_information_follows_them(tmp_path) -> None:
    module, prompts, _ = lightning_grpo.build(steps=3, kl_free=True, beta=0.0)
    module.__class__ = Recording
    module.returned = []
    callback = LoraRLCallback(kl_free=True, kl_every=1000, load_entry_points=False)
    trainer = trainer_for(callback, 3, tmp_path, enable_checkpointing=False)
    trainer.fit(module, prompts)
    settings = callback.host.plugin("bandwidth").advantage_settings
    assert (settings.scale_rewards, settings.aggregation, settings.epsilon) == ("group", "sum_then_normalize", 1e-4)
    # the module's own advantages (its training_step formula), recomputed from what it returned
    expected = []
    for step_rewards, _ in module.returned:
        rewards = torch.tensor(step_rewards)
        advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        expected.append(float((advantages.abs().amax(1) == 0).float().mean()))
    assert column(read_metrics(trainer), "bandwidth/zero_info_frac") == pytest.approx(expected)

    class Declared(lightning_grpo.GRPOModule):
        scale_rewards = "batch"
        multi_objective_aggregation = "normalize_then_sum"

    other = LoraRLCallback(load_entry_points=False)
    other.on_train_start(trainer, Declared(module.model, module.tokenizer, module.reward_fn))
    declared = other.host.plugin("bandwidth").advantage_settings
    assert (declared.scale_rewards, declared.aggregation) == ("batch", "normalize_then_sum")
