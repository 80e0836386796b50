"""The after-generation filter (sampling="filter") in real TRL runs on the tiny model: batches stay full,
groups whose advantages TRL computed all zero are gone from what the loss sees, refills are counted, and
settings where it cannot apply are refused."""

from __future__ import annotations

import random
import warnings

import pytest
from helpers import RecordingReward, grpo_trainer, latest_logged

from lora_rl_plugins.learning.filtering import GroupFilter, check_filterable, zero_information_groups


def test_group_filter_fills_slots_from_later_rounds() -> None:
    batch = GroupFilter(max_rounds=2)
    batch.offer([False, True, True, False])
    assert batch.needs_refill() and batch.empty == 2
    batch.offer([True, False, True, True])
    batch.offer([False, True, True, False])
    assert not batch.needs_refill() and batch.rounds == [0, 1, None, 0]
    assert batch.row_rounds(0, 8, 2) == [0, 0, 1, 1, 0, 0, 0, 0]
    assert batch.row_rounds(4, 4, 2) == [0, 0, 0, 0]  # the second process's rows: slots 2 and 3
    # zero groups generated: 2 + 3 + 2 = 7; slot 2 keeps its round-0 group
    assert batch.metrics(2) == {"groups_dropped": 6, "extra_rounds": 2, "extra_rollouts": 16, "unfilled_groups": 1}
    with pytest.raises(ValueError, match="3 groups"):
        batch.offer([True, True, True])
    with pytest.raises(ValueError, match="outside"):
        batch.row_rounds(6, 4, 2)


def test_hopeless_slots_stop_the_refill() -> None:
    from lora_rl_plugins.learning.filtering import hopeless_groups

    rewards = [[None], [float("nan")], [1.0], [None], [0.0], [0.0]]
    assert hopeless_groups(rewards, 2) == ["unscored", None, None]
    assert hopeless_groups(rewards, 2, [True, False, True]) == ["unscored", None, "never_varied"]
    with pytest.raises(ValueError, match="2 never_varied flags for 3 groups"):
        hopeless_groups(rewards, 2, [True, False])
    batch = GroupFilter(max_rounds=3)
    batch.offer([True, False, True], ["unscored", None, None])
    assert batch.needs_refill()  # slot 2 may still vary
    batch.offer([True, True, True], ["unscored", None, "never_varied"])
    assert not batch.needs_refill() and batch.extra_rounds == 1  # every empty slot is hopeless: stop early
    assert batch.causes() == {"unscored": 1, "never_varied": 1}
    capped = GroupFilter(max_rounds=0)
    capped.offer([True, False])
    assert not capped.needs_refill() and capped.causes() == {"capped": 1}


def test_never_varied_is_the_ledgers_judgement() -> None:
    from lora_rl_plugins import LearningConfig, LearningPlugin, RolloutsScored

    plugin = LearningPlugin(LearningConfig(skip_after=2, sampling="filter"))
    keys = ["a"] * 2 + ["b"] * 2
    service = plugin.filter

    def visit(rows):
        scored = RolloutsScored(1, [[r] for r in rows], ["f"], [1.0], 2, prompt_keys=keys)
        plugin.on_rollouts_scored(scored)
        return scored

    first = visit([1.0, 1.0, 0.0, 1.0])
    batch = GroupFilter(max_rounds=3)
    service.offer_round(batch, first)
    assert batch.hopeless == [None, None]  # one visit of "a": not yet judged
    second = visit([1.0, 1.0, 1.0, 1.0])
    service.offer_round(batch, second)  # "a": 2 visits, never a signal; "b" varied once
    assert batch.hopeless == ["never_varied", None] and not batch.needs_refill()  # "b" was filled in round 0


def test_zero_information_is_the_trainers_advantages() -> None:
    from lora_rl_plugins.bandwidth.advantages import AdvantageSettings

    rewards = [[1.0], [1.0], [0.0], [1.0], [None], [0.5]]
    assert zero_information_groups(rewards, 2) == [True, False, True]  # a group with one scored rollout: NaN -> 0
    with pytest.raises(ValueError, match="scale_rewards='batch'"):
        check_filterable(AdvantageSettings(scale_rewards="batch"))
    with pytest.raises(ValueError, match="normalize_then_sum"):
        check_filterable(AdvantageSettings(aggregation="normalize_then_sum"))


def _run(tmp_path, reward, options=None, **config):
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    recorder = RecordingReward(reward)
    trainer = grpo_trainer(recorder, tmp_path, steps=config.pop("steps", 4), **config)
    options = {"filter_max_rounds": 3, **(options or {})}
    callback = LoraRLCallback(trainer, sampling="filter", load_entry_points=False, live_view=False, **options)
    trainer.add_callback(callback)
    outputs, losses = [], []
    inner = trainer._generate_and_score_completions  # the callback's wrapper: it returns the merged batch

    def generate(inputs):
        output = inner(inputs)
        outputs.append(output)
        return output

    trainer._generate_and_score_completions = generate
    inner_loss = trainer._compute_loss

    def compute_loss(model, inputs):
        losses.append({k: inputs[k] for k in ("advantages", "completion_mask", "num_items_in_batch")})
        return inner_loss(model, inputs)

    trainer._compute_loss = compute_loss
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return trainer, recorder, outputs, losses, [str(w.message) for w in caught]


@pytest.mark.parametrize("schedule", [{}, {"num_iterations": 2, "steps_per_generation": 2}])
def test_filter_keeps_batches_full_and_drops_zero_information_groups(tmp_path, schedule) -> None:
    pytest.importorskip("trl")
    rng = random.Random(0)

    def reward(prompts, completions):  # a group of 4 is all 0 with probability 0.7^4 ≈ 0.24
        return [float(rng.random() < 0.3) for _ in prompts]

    # skip_after=10: a prompt constant at 2 visits by chance is not judged "never varied" (that stops its refills)
    trainer, recorder, outputs, losses, _ = _run(tmp_path, reward, {"skip_after": 10}, **schedule)
    k, rows = trainer.num_generations, trainer.args.generation_batch_size
    assert len(outputs) == 4 // (schedule.get("num_iterations", 1) * schedule.get("steps_per_generation", 1))
    extra = len(recorder.calls) - len(outputs)  # every TRL scoring call beyond one per generation batch: a refill
    assert extra > 0, "the reward makes some groups constant: at least one refill round"
    calls = iter(recorder.calls)
    for output in outputs:
        # independent: replay the recorded rewards round by round; each slot takes its first round with unequal
        # rewards, and TRL's advantage there is (r - mean) / (std + 1e-4), recomputed in float64
        expected: list[list[float] | None] = [None] * (rows // k)
        for _ in range(4):
            if all(e is not None for e in expected):
                break
            rewards = next(calls)
            for g in range(rows // k):
                group = rewards[g * k : (g + 1) * k]
                if expected[g] is None and max(group) > min(group):
                    mean = sum(group) / k
                    std = (sum((r - mean) ** 2 for r in group) / (k - 1)) ** 0.5
                    expected[g] = [(r - mean) / (std + 1e-4) for r in group]
        assert all(e is not None for e in expected)  # every slot filled within the cap
        advantages = output["advantages"].tolist()
        assert len(advantages) == rows  # the batch stays full
        assert advantages == pytest.approx([a for e in expected for a in e], abs=1e-5)  # no all-zero group left
        mask = output["completion_mask"]
        assert output["completion_ids"].shape == mask.shape
        assert output["prompt_ids"].shape == output["prompt_mask"].shape
        assert int(output["num_items_in_batch"]) == int(mask.sum())  # one process: TRL's gather is the sum
    assert next(calls, None) is None
    # the loss sees full micro-batches: generation batch / steps_per_generation rows each
    per_step = rows // trainer.args.steps_per_generation
    assert all(len(loss["advantages"]) == per_step for loss in losses)
    assert len(losses) == 4
    last = latest_logged(trainer.state.log_history)
    assert last["learning/filter_extra_rounds"] == extra
    assert last["learning/filter_extra_rollouts"] == extra * rows
    assert last["learning/filter_groups_dropped"] >= 1 and last["learning/filter_unfilled_groups"] == 0
    assert last["learning/filter_seconds"] > 0


def test_filter_keeps_what_there_is_after_the_round_cap(tmp_path) -> None:
    pytest.importorskip("trl")

    rng = random.Random(1)

    def reward(prompts, completions):  # digits >= 5 always solved: no refill can make them informative
        return [1.0 if int(p[0]) >= 5 else float(rng.random() < 0.5) for p in prompts]

    # skip_after=10: no prompt counts as never varied within these rounds, so only the cap stops the refills
    trainer, _, outputs, losses, messages = _run(tmp_path, reward, {"skip_after": 10}, steps=2)
    assert all(len(o["advantages"]) == trainer.args.generation_batch_size for o in outputs)  # still full
    assert [len(loss["advantages"]) for loss in losses] == [trainer.args.per_device_train_batch_size] * 2
    last = latest_logged(trainer.state.log_history)
    assert last["learning/filter_extra_rounds"] == 3 * len(outputs)  # the cap, every batch
    assert last["learning/filter_unfilled_groups"] >= 1
    assert any("filter_max_rounds=3" in m and "raise filter_max_rounds" in m for m in messages)
    assert not any("solved_frac" in m for m in messages)


def test_filter_stops_refilling_prompts_that_never_varied(tmp_path) -> None:
    """Digits >= 5 are always solved: after skip_after=2 visits without signal (round 0 and the first refill) their
    slots are hopeless, so a batch stops at 1 refill round once the other slots are filled (or after the cap)."""
    pytest.importorskip("trl")
    rng = random.Random(1)

    def reward(prompts, completions):
        return [1.0 if int(p[0]) >= 5 else float(rng.random() < 0.5) for p in prompts]

    trainer, recorder, outputs, _, messages = _run(tmp_path, reward, steps=2)
    last = trainer.state.log_history[-2]
    assert len(recorder.calls) - len(outputs) == last["learning/filter_extra_rounds"] < 3 * len(outputs)
    never = [m for m in messages if "never varied" in m]
    assert len(never) == 1 and "solved" in never[0] and "skip_after=2" in never[0]
    assert not any("solved_frac" in m for m in messages)


def test_filter_does_not_refill_groups_without_rewards(tmp_path) -> None:
    """Rewards all None: no refill round at all (issue 23 saw 12 rounds, 36 rollouts), TRL's token count as
    without the filter, and the warning names the cause."""
    pytest.importorskip("trl")

    def reward(prompts, completions):
        return [None] * len(prompts)

    trainer, recorder, outputs, _, messages = _run(tmp_path, reward, steps=2)
    assert len(recorder.calls) == len(outputs) == 2  # one scoring per generation batch: no refill
    latest = {k: v for entry in trainer.state.log_history[:-1] for k, v in entry.items()}  # unchanged: logged once
    assert latest["learning/filter_extra_rounds"] == 0 and latest["learning/filter_unfilled_groups"] == 8
    unscored = [m for m in messages if "no rollout has a reward" in m]
    assert len(unscored) == 1 and "stopped refilling them after 0 refill round(s)" in unscored[0]
    assert not any("solved_frac" in m or "raise filter_max_rounds" in m for m in messages)
    plain = grpo_trainer(RecordingReward(reward), tmp_path / "plain", steps=2)
    plain.train()
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    assert tokens == [e["num_tokens"] for e in plain.state.log_history if "num_tokens" in e]


def test_filter_is_refused_where_it_cannot_apply(tmp_path) -> None:
    pytest.importorskip("trl")
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    trainer = grpo_trainer(RecordingReward(lambda p, c: [1.0] * len(p)), tmp_path, steps=1, scale_rewards="batch")
    trainer.add_callback(LoraRLCallback(trainer, sampling="filter", load_entry_points=False, live_view=False))
    with pytest.raises(ValueError, match="scale_rewards='batch'"):
        trainer.train()
    with pytest.raises(ValueError, match="choose one sampling"):
        LoraRLCallback(trainer, sampling="filter", informative_sampling=True, load_entry_points=False)
    with pytest.raises(ValueError, match="sampling must be"):
        LoraRLCallback(trainer, sampling="dapo", load_entry_points=False)


def test_filter_is_refused_by_the_lightning_callback() -> None:
    pytest.importorskip("lightning")
    from lora_rl_plugins.integrations.lightning import LoraRLCallback

    with pytest.raises(ValueError, match="TRL integration"):
        LoraRLCallback(sampling="filter", load_entry_points=False)
    assert LoraRLCallback(sampling="informative", load_entry_points=False).options.learning.informative_sampling
