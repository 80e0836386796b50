"""Per-group accounting and the bandwidth plugin, driven directly (no framework)."""

from __future__ import annotations

import math
import warnings

import pytest

from lora_rl_plugins import (
    AdaptedMatrix,
    AdapterReady,
    AdapterSummary,
    BandwidthConfig,
    BandwidthPlugin,
    PluginHost,
    RewardValueError,
    RolloutShapeError,
    RolloutsScored,
    RunStarted,
    StepEnded,
    make_plugin_manager,
)
from lora_rl_plugins.bandwidth.accounting import account_group, account_token_group
from lora_rl_plugins.bandwidth.information import binary_entropy, group_uniform_prior_bits
from lora_rl_plugins.bandwidth.plugin import CapacityWarning, RewardLevelsWarning

NAN = math.nan


def batch(rows, group_size, step=1, names=("f",), weights=None, completions=None, **kw) -> RolloutsScored:
    rows = [r if isinstance(r, (list, tuple)) else [r] for r in rows]
    return RolloutsScored(
        step=step,
        rewards=rows,
        reward_names=list(names),
        reward_weights=list(weights or [1.0] * len(names)),
        group_size=group_size,
        completions=completions,
        **kw,
    )


def host_with(config: BandwidthConfig | None = None, adapter: AdapterSummary | None = None, total_steps=None):
    plugin = BandwidthPlugin(config)
    host = PluginHost(make_plugin_manager({"bandwidth": plugin}, load_entry_points=False))
    host.on_run_start(RunStarted("test", 4, total_steps=total_steps))
    if adapter is not None:
        host.on_adapter_ready(AdapterReady(adapter))
    return host, plugin


def one_matrix_adapter(rank: int, d: int) -> AdapterSummary:
    return AdapterSummary((AdaptedMatrix("layer", d, d, rank, 2.0),))


# -- account_group ------------------------------------------------------------------------------
def test_constant_group_carries_zero_bits() -> None:
    account = account_group([1.0, 1.0, 1.0, 1.0], levels=2)
    assert account.estimate == 0.0
    assert account.zero_info
    assert account.bound == 4.0  # D = K = 4 rollouts, log2 L = 1


def test_binary_group_estimate_is_k_times_h() -> None:
    account = account_group([1.0, 0.0, 0.0, 0.0], levels=2)
    assert account.estimate == pytest.approx(4 * binary_entropy(0.25))
    assert account.rule == "levels"


def test_distinct_completions_cap_the_bound() -> None:
    # 4 rollouts, only 2 distinct completions: bound D log2 L = 2 bits, estimate capped at it.
    account = account_group([1.0, 1.0, 0.0, 0.0], levels=2, completions=["a", "a", "b", "b"])
    assert account.bound == 2.0
    assert account.estimate == 2.0  # K·H = 4 > 2


def test_answers_tighten_to_log2_m_plus_1_and_uniform_prior_is_reported_apart() -> None:
    rewards = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    answers = ["7", "3", "3", "9", None, "9"]  # M = 3 distinct parseable answers
    account = account_group(rewards, levels=2, answers=answers)
    assert account.rule == "answers" and account.uniform_prior is None
    assert account.bound == pytest.approx(2.0)  # log2(3 + 1)
    with_v = account_group(rewards, levels=2, answers=answers, answer_space_size=10)
    # the uniform-prior value is exact only under a uniform prior: not a bound, so it does not replace it
    assert with_v.rule == "answers" and with_v.bound == pytest.approx(2.0)
    assert with_v.uniform_prior == pytest.approx(group_uniform_prior_bits(3, 10))
    assert with_v.estimate == pytest.approx(min(6 * binary_entropy(1 / 6), 2.0))


def test_answers_ignored_for_non_binary_rewards() -> None:
    account = account_group([1.0, 0.5, 0.0, 0.0], levels=3, answers=["a", "b", "c", "d"])
    assert account.rule == "levels"
    assert account.bound == pytest.approx(4 * math.log2(3))


def test_missing_rewards_excluded_and_small_groups_give_zero() -> None:
    account = account_group([1.0, NAN, 0.0, NAN], levels=2)
    assert account.scored == 2 and account.missing == 2
    assert account.estimate == 2.0
    small = account_group([1.0, NAN, NAN, NAN], levels=2)
    assert small.rule == "too_small" and small.estimate == 0.0 and small.bound == 0.0


def test_token_group_bound_is_t_log2_a_per_distinct_rollout() -> None:
    tokens = [[1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 0, 1]]
    account = account_token_group(tokens, alphabet_size=2, completions=["x", "y", "z", "x"])
    assert account.bound == 9.0  # 3 distinct rollouts x 3 tokens x 1 bit
    expected = 4 * binary_entropy(0.75) + 4 * binary_entropy(0.25) + 4 * binary_entropy(0.75)
    assert account.estimate == pytest.approx(min(expected, 9.0))


# -- plugin -------------------------------------------------------------------------------------
def test_plugin_step_and_total_metrics() -> None:
    host, _ = host_with(BandwidthConfig(reward_levels=2))
    host.on_rollouts_scored(batch([1, 0, 0, 0, 1, 1, 1, 1], 4))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/bits_step"] == pytest.approx(4 * binary_entropy(0.25))
    assert metrics["bandwidth/bound_step"] == 8.0
    assert metrics["bandwidth/zero_info_frac"] == 0.5
    assert metrics["bandwidth/bits_per_rollout"] == pytest.approx(4 * binary_entropy(0.25) / 8)
    assert metrics["bandwidth/reward_levels"] == 2 and metrics["bandwidth/reward_levels_inferred"] == 0
    host.on_rollouts_scored(batch([1, 0, 1, 0], 4, step=2))
    host.on_step_end(StepEnded(2))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/bits_step"] == 4.0
    assert metrics["bandwidth/bits_total"] == pytest.approx(4 * binary_entropy(0.25) + 4.0)
    assert metrics["bandwidth/bound_total"] == 12.0
    assert "bandwidth/capacity_bits" not in metrics  # no adapter known


def test_step_without_rollouts_reports_zero_bits() -> None:
    host, _ = host_with()
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/bits_step"] == 0.0
    assert "bandwidth/bits_per_rollout" not in metrics and "bandwidth/zero_info_frac" not in metrics


def test_reward_levels_inferred_from_distinct_values() -> None:
    host, _ = host_with()
    host.on_rollouts_scored(batch([0.0, 0.5, 1.0, 1.0], 4))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/reward_levels"] == 3 and metrics["bandwidth/reward_levels_inferred"] == 1
    assert metrics["bandwidth/bound_step"] == pytest.approx(4 * math.log2(3))


def test_quantised_continuous_rewards() -> None:
    host, _ = host_with(BandwidthConfig(reward_levels=4, reward_range=(0.0, 1.0)))
    host.on_rollouts_scored(batch([0.01, 0.02, 0.97, 0.99], 4))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    # the bound counts L = 4 declared levels: 4 rollouts x 2 bits. The trainer's advantages come from the
    # raw rewards, four distinct values: the estimate is 4·log2 4 = 8 bits, capped by the bound (8)
    assert metrics["bandwidth/bound_step"] == 8.0
    assert metrics["bandwidth/bits_step"] == 8.0
    assert metrics["bandwidth/reward_levels"] == 4


def test_quantised_to_one_level_still_follows_the_trainers_advantages() -> None:
    # issue 13: rewards 0.50-0.56 fall in one of 4 levels over (0, 1), but TRL's advantages are not zero
    host, _ = host_with(BandwidthConfig(reward_levels=4, reward_range=(0.0, 1.0)))
    host.on_rollouts_scored(batch([0.50, 0.52, 0.54, 0.56, 0.5, 0.5, 0.5, 0.5], 4))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/zero_info_frac"] == 0.5  # only the constant group
    assert metrics["bandwidth/bound_step"] == 16.0  # 2 groups x 4 rollouts x log2 4
    assert metrics["bandwidth/bits_step"] == 8.0  # four distinct advantages: 4·log2 4, within the bound


def test_declared_levels_exceeded_warns_and_uses_observed() -> None:
    host, plugin = host_with(BandwidthConfig(reward_levels=2))
    with pytest.warns(RewardLevelsWarning, match="reward_levels=2 was declared but 3"):
        host.on_rollouts_scored(batch([0.0, 0.5, 1.0, 1.0], 4))
    assert plugin.reward_levels == 3


def test_combined_reward_uses_weights_and_nansum() -> None:
    _, plugin = host_with()
    rows = [[1.0, NAN], [0.0, 1.0], [NAN, NAN], [1.0, 1.0]]
    accounts = plugin.account(batch(rows, 4, names=("a", "b"), weights=[1.0, 2.0]))
    # combined: 1, 2, NaN, 3 -> three scored, all distinct -> K·H = 3·log2 3
    assert accounts[0].scored == 3 and accounts[0].missing == 1
    assert accounts[0].estimate == pytest.approx(3 * math.log2(3))


def test_missing_and_small_group_counts() -> None:
    host, _ = host_with()
    host.on_rollouts_scored(batch([NAN, 1.0, NAN, NAN, 1.0, 0.0, 0.0, 1.0], 4))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/missing_rewards"] == 3
    assert metrics["bandwidth/small_groups"] == 1
    assert metrics["bandwidth/zero_info_frac"] == 0.5


def test_infinite_reward_is_a_clear_error_naming_the_function() -> None:
    host, _ = host_with()
    with pytest.raises(RewardValueError, match=r"reward function 'accuracy' returned inf for rollout 2"):
        host.on_rollouts_scored(
            batch([[0, 1], [1, 1], [math.inf, 0], [0, 0]], 4, names=("accuracy", "format")),
        )
    with pytest.raises(RewardValueError, match="'format' returned -inf"):
        host.on_rollouts_scored(batch([[0, -math.inf]] * 4, 4, names=("accuracy", "format")))


def test_ragged_groups_and_wrong_lengths_are_clear_errors() -> None:
    host, _ = host_with()
    with pytest.raises(RolloutShapeError, match="6 rollouts do not split into groups of 4"):
        host.on_rollouts_scored(batch([1, 0, 1, 0, 1, 0], 4))
    with pytest.raises(RolloutShapeError, match="rollout 1 has 1 reward values but there are 2"):
        host.on_rollouts_scored(batch([[1, 0], [1], [0, 0], [1, 1]], 4, names=("a", "b")))
    with pytest.raises(ValueError, match="3 completions for 4 rollouts"):
        host.on_rollouts_scored(batch([1, 0, 1, 0], 4, completions=["a", "b", "c"]))


def test_capacity_metrics_warnings_and_rank_advice() -> None:
    adapter = one_matrix_adapter(rank=1, d=2)  # 4 params -> 128 bits of capacity at 32 bits/param
    host, plugin = host_with(BandwidthConfig(reward_levels=2), adapter, total_steps=20)
    assert plugin.capacity_bits == 128.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 21):
            host.on_rollouts_scored(batch([1, 0, 1, 0, 1, 0, 1, 0], 8, step=step))  # 8 bits
            host.on_step_end(StepEnded(step, 20))
            metrics = host.collect_metrics()
            assert metrics["bandwidth/capacity_used"] == pytest.approx(8 * step / 128)
    capacity_warnings = [w for w in caught if issubclass(w.category, CapacityWarning)]
    assert len(capacity_warnings) == 2  # once at 50%, once at 100%
    assert "50%" in str(capacity_warnings[0].message)
    # at 50% (step 8, 64 bits) the projection is 160 bits over 20 steps -> r = ceil(160 / 128) = 2
    assert "smallest rank that holds them is r=2" in str(capacity_warnings[0].message)
    assert metrics["bandwidth/projected_bits"] == 160.0
    assert metrics["bandwidth/rank_sufficient"] == 2


def test_non_lora_model_omits_capacity_with_one_info_and_no_warning(caplog) -> None:
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="lora_rl_plugins"):
        warnings.simplefilter("error")
        host, _ = host_with(adapter=AdapterSummary())
    assert [r.levelname for r in caplog.records if "no LoRA adapter" in r.message] == ["INFO"]
    host.on_rollouts_scored(batch([1, 0, 1, 0], 4))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/bits_step"] == 4.0
    assert not any("capacity" in name or "rank" in name for name in metrics)


def test_state_round_trip_resumes_exactly() -> None:
    host, _ = host_with()
    host.on_rollouts_scored(batch([0.0, 0.5, 1.0, NAN], 4))
    host.on_step_end(StepEnded(1))
    state = host.get_state()
    import json

    restored_host, restored = host_with()
    restored_host.set_state(json.loads(json.dumps(state)))
    for h in (host, restored_host):
        h.on_rollouts_scored(batch([0.0, 0.25, 1.0, 1.0], 4, step=2))
        h.on_step_end(StepEnded(2))
    left = {k: v for k, v in host.collect_metrics().items() if not k.startswith("plugins/")}
    right = {k: v for k, v in restored_host.collect_metrics().items() if not k.startswith("plugins/")}
    assert left == right
    assert restored.reward_levels == 4


# -- the trainer's advantage settings, levels and labels (issue 13) ---------------------------------------
def host_for(options: dict, config: BandwidthConfig | None = None):
    plugin = BandwidthPlugin(config)
    host = PluginHost(make_plugin_manager({"bandwidth": plugin}, load_entry_points=False))
    host.on_run_start(RunStarted("test", 4, options=options))
    return host, plugin


def test_settings_from_run_options_decide_zero_information() -> None:
    # two functions whose weighted sum (2·a + b) is 2 for every rollout of the first group
    rows = [[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    for aggregation, zero_frac in (("sum_then_normalize", 1.0), ("normalize_then_sum", 0.0)):
        host, plugin = host_for({"multi_objective_aggregation": aggregation})
        host.on_rollouts_scored(batch(rows, 4, names=("a", "b"), weights=[2.0, 1.0]))
        host.on_step_end(StepEnded(1))
        metrics = host.collect_metrics()
        assert metrics["bandwidth/zero_info_frac"] == zero_frac, aggregation
        assert (metrics["bandwidth/bits_step"] > 0) == (zero_frac == 0.0)
    # normalize_then_sum: levels are the vectors of function values (2 seen), not the one weighted sum
    assert plugin.reward_levels == 2


def test_invalid_trainer_setting_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="scale_rewards='groups' is not one GRPO knows"):
        host_for({"scale_rewards": "groups"})


def test_uniform_prior_value_is_reported_apart_from_the_bound() -> None:
    config = BandwidthConfig(answer_extractor=lambda text: text, answer_space_size=10)
    host, _ = host_for({}, config)
    host.on_rollouts_scored(batch([1, 0, 0, 0], 4, completions=["7", "3", "3", "9"]))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert metrics["bandwidth/bound_step"] == pytest.approx(2.0)  # log2(M + 1), M = 3: a bound
    assert metrics["bandwidth/uniform_prior_step"] == pytest.approx(group_uniform_prior_bits(3, 10))
    assert metrics["bandwidth/uniform_prior_total"] == pytest.approx(group_uniform_prior_bits(3, 10))
    assert metrics["bandwidth/bits_step"] == pytest.approx(min(4 * binary_entropy(0.25), 2.0))
    plain, _ = host_for({})
    plain.on_rollouts_scored(batch([1, 0, 0, 0], 4))
    plain.on_step_end(StepEnded(1))
    assert not any("uniform_prior" in name for name in plain.collect_metrics())


def test_continuous_reward_without_levels_warns_once_and_says_so() -> None:
    from lora_rl_plugins.bandwidth.plugin import ContinuousRewardWarning

    rng = __import__("random").Random(0)
    host, _ = host_for({})
    with pytest.warns(ContinuousRewardWarning, match=r"K·log2 K = 8.0 bits for a group of K=4"):
        host.on_rollouts_scored(batch([rng.random() for _ in range(20)], 4))  # 20 > max(K, 16) distinct values
    host.on_step_end(StepEnded(1))
    assert host.collect_metrics()["bandwidth/bits_step"] == pytest.approx(5 * 4 * math.log2(4))
    assert "K·log2 K per group" in host.summary_line()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        host.on_rollouts_scored(batch([rng.random() for _ in range(8)], 4, step=2))  # once
    # binary rewards and declared levels never warn
    for config, rows in (
        (None, [1, 0, 1, 0, 0, 1, 1, 0]),
        (BandwidthConfig(reward_levels=8, reward_range=(0, 1)), None),
    ):
        quiet, _ = host_for({}, config)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            quiet.on_rollouts_scored(batch(rows or [rng.random() for _ in range(20)], 4))


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, i: float(rng.randrange(1000)),  # integer levels: len(completion), token counts
        lambda rng, i: rng.randrange(1000) / 100,  # two decimals: a grid of step 1/100
        lambda rng, i: rng.randrange(400) * 0.25,  # quarters
        lambda rng, i: [0.0, 1 / 3, 2**-0.5, 1.0, 1.7, 2.2, math.pi, 5.1][i % 8],  # few-valued (8 <= 16)
    ],
    ids=["integers", "two-decimals", "quarters", "few-valued"],
)
def test_integer_grid_and_few_valued_rewards_are_levels_not_continuous(draw) -> None:
    rng = __import__("random").Random(1)
    host, plugin = host_for({})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(1, 6):
            rows = [draw(rng, i) for i in range(32)]
            host.on_rollouts_scored(batch(rows, 4, step=step))
            host.on_step_end(StepEnded(step))
    assert "continuous" not in plugin.warned and "continuous" not in (host.summary_line() or "")


def test_continuous_rule_per_function_and_after_resume() -> None:
    """One function on a grid and another off every grid: continuous; the grids survive a resume."""
    import json

    from lora_rl_plugins.bandwidth.plugin import ContinuousRewardWarning

    rng = __import__("random").Random(2)
    rows = [[float(i), 0.0] for i in range(20)]  # integers from "a", "b" constant: levels
    host, plugin = host_for({})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        host.on_rollouts_scored(batch(rows, 4, names=("a", "b")))
    assert plugin.grids["a"] == plugin.grids["b"] == list(range(1, 101))
    restored, restored_plugin = host_for({})
    restored.set_state(json.loads(json.dumps(host.get_state())))
    assert restored_plugin.grids == plugin.grids
    with pytest.warns(ContinuousRewardWarning):
        restored.on_rollouts_scored(batch([[float(i), rng.random()] for i in range(20)], 4, names=("a", "b"), step=2))
    assert restored_plugin.grids["b"] == [] and restored_plugin.grids["a"] == list(range(1, 101))


def test_state_round_trip_with_vector_levels_and_uniform_prior() -> None:
    import json

    config = BandwidthConfig(answer_extractor=lambda text: text, answer_space_size=10)
    options = {"multi_objective_aggregation": "normalize_then_sum"}
    rows = [[1.0, 0.0], [0.0, None], [1.0, 0.5], [0.0, 0.5]]
    host, _ = host_for(options, config)
    host.on_rollouts_scored(batch(rows, 4, names=("a", "b"), completions=["1", "2", "3", "4"]))
    host.on_step_end(StepEnded(1))
    restored_host, restored = host_for(options, config)
    restored_host.set_state(json.loads(json.dumps(host.get_state())))
    for h in (host, restored_host):
        h.on_rollouts_scored(batch(rows[::-1], 4, names=("a", "b"), step=2, completions=["1", "2", "2", "4"]))
        h.on_step_end(StepEnded(2))
    left = {k: v for k, v in host.collect_metrics().items() if not k.startswith("plugins/")}
    right = {k: v for k, v in restored_host.collect_metrics().items() if not k.startswith("plugins/")}
    assert left == right and restored.reward_levels == 4
