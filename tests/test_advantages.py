"""Zero-information groups follow the advantages the trainer computes, for every GRPOConfig reward setting.

Two independent checks:
* the framework-free ``grpo_advantages`` against the research reference of TRL 1.16 (a pure-python
  transcription verified against TRL's own source), on random inputs with None/NaN, tiny groups and
  zero/negative weights;
* real ``GRPOTrainer`` runs: the library's per-group classification and per-step ``zero_info_frac``
  against TRL's own ``output["advantages"]`` of ``_generate_and_score_completions``.
"""

from __future__ import annotations

import math
import random

import pytest

from lora_rl_plugins.bandwidth.advantages import (
    AdvantageSettings,
    advantage_pattern,
    grpo_advantages,
)

NAN = math.nan


# -- an independent reference: TRL 1.16's advantage block, transcribed (research/trl_advantages.py) --------
def _nanmean(xs):
    vals = [x for x in xs if x == x]
    return sum(vals) / len(vals) if vals else NAN


def _nanstd(xs):
    vals = [x for x in xs if x == x]
    n = len(vals)
    if n < 2:
        return NAN
    m = sum(vals) / n
    return math.sqrt(sum((v - m) ** 2 for v in vals) / n * (n / (n - 1)))


def _nansum(xs):
    return sum(x for x in xs if x == x)


def reference(rows, g, w, scale, agg):
    scale = {True: "group", False: "none"}.get(scale, scale)
    rpf = [[NAN if v is None else float(v) for v in row] for row in rows]
    n, f = len(rpf), len(rpf[0])
    groups = [range(i, i + g) for i in range(0, n, g)]
    unscorable = [all(v != v for v in row) for row in rpf]
    if agg == "sum_then_normalize":
        rewards = [NAN if unscorable[i] else _nansum([rpf[i][k] * w[k] for k in range(f)]) for i in range(n)]
        mean, std = [0.0] * n, [0.0] * n
        for idx in groups:
            m = _nanmean([rewards[i] for i in idx])
            s = _nanstd([rewards[i] for i in idx])
            for i in idx:
                mean[i], std[i] = m, s
        if scale == "batch":
            std = [_nanstd(rewards)] * n
        adv = [rewards[i] - mean[i] for i in range(n)]
        if scale != "none":
            adv = [adv[i] / (std[i] + 1e-4) for i in range(n)]
    else:
        z = [[NAN] * f for _ in range(n)]
        for idx in groups:
            for k in range(f):
                col = [rpf[i][k] for i in idx]
                m, s = _nanmean(col), _nanstd(col)
                for i in idx:
                    z[i][k] = (rpf[i][k] - m) / (s + 1e-4)
        rewards = [NAN if unscorable[i] else _nansum([z[i][k] * w[k] for k in range(f)]) for i in range(n)]
        s, m = _nanstd(rewards), _nanmean(rewards)
        std = [s] * n
        adv = [(rewards[i] - m) / (s + 1e-4) for i in range(n)]
    adv = [0.0 if a != a else a for a in adv]
    return adv, [s == s and abs(s) <= 1e-8 for s in std]


def random_case(rng):
    g = rng.choice([2, 3, 4, 8])
    ngroups = rng.randint(1, 5)
    f = rng.randint(1, 3)
    kind = rng.choice(["binary", "levels", "continuous", "constant"])
    p_none = rng.choice([0.0, 0.1, 0.4, 0.9])
    rows = []
    for _ in range(g * ngroups):
        row = []
        for _ in range(f):
            v = {
                "binary": float(rng.randint(0, 1)),
                "levels": rng.choice([0.0, 0.25, 0.5, 1.0, 2.0]),
                "constant": 1.0,
                "continuous": round(rng.uniform(-3, 3), 3),
            }[kind]
            if rng.random() < p_none:
                v = None if rng.random() < 0.5 else NAN  # TRL turns None into NaN; both reach the plugin
            row.append(v)
        rows.append(row)
    if rng.random() < 0.2:
        rows[:g] = [[None] * f for _ in range(g)]  # a group nobody scored
    if rng.random() < 0.2 and ngroups > 1:  # a group with one scored rollout
        rows[g : 2 * g] = [[float("nan")] * f for _ in range(g)]
        rows[g + rng.randrange(g)] = [1.0] * f
    return rows, g, [rng.choice([1.0, 0.5, 2.0, -1.0, 0.0]) for _ in range(f)]


SETTINGS = [
    (agg, scale)
    for agg in ("sum_then_normalize", "normalize_then_sum")
    for scale in ("group", "batch", "none", True, False)
]


def test_advantages_match_the_reference_on_random_inputs_with_nan() -> None:
    rng = random.Random(13)
    for _ in range(300):
        rows, g, w = random_case(rng)
        for agg, scale in SETTINGS:
            expected, zero_std = reference(rows, g, w, scale, agg)
            got = grpo_advantages(rows, g, w, AdvantageSettings(scale, agg))
            assert got.advantages == pytest.approx(expected, rel=1e-9, abs=1e-9), (rows, g, w, agg, scale)
            assert got.is_std_zero == zero_std
            assert got.frac_reward_zero_std == pytest.approx(sum(zero_std) / len(zero_std))


def test_equal_rewards_give_exactly_zero_advantages() -> None:
    # float64 sums of 0.1 are not exact; the mean of equal values is taken as the value itself
    for value in (0.1, 1 / 3, -0.6, 0.7):
        for agg, scale in SETTINGS:
            got = grpo_advantages([[value]] * 8, 8, settings=AdvantageSettings(scale, agg))
            assert got.advantages == [0.0] * 8 and got.zero_groups() == [True]


def test_zero_groups_follow_the_advantages_in_every_setting() -> None:
    rows = [[1.0, 0.0], [0.0, 2.0]] * 2 + [[1.0, 1.0]] * 4 + [[1.0, None]] + [[None, None]] * 3
    for agg, scale in SETTINGS:
        got = grpo_advantages(rows, 4, [2.0, 1.0], AdvantageSettings(scale, agg))
        zero = [all(abs(a) <= 1e-9 for a in got.group(g)) for g in range(3)]
        assert got.zero_groups() == zero
        # combined reward 2 everywhere in group 0: zero only where the functions are summed first
        assert zero == [agg == "sum_then_normalize", True, True]


def test_settings_are_validated_with_a_clear_message() -> None:
    assert AdvantageSettings(True).scale_rewards == "group" and AdvantageSettings(False).scale_rewards == "none"
    with pytest.raises(ValueError, match="scale_rewards='grp' is not one GRPO knows"):
        AdvantageSettings("grp")
    with pytest.raises(ValueError, match="multi_objective_aggregation='mean'"):
        AdvantageSettings.from_options({"multi_objective_aggregation": "mean"})
    with pytest.raises(ValueError, match="advantage_epsilon"):
        AdvantageSettings(epsilon=-1.0)
    assert AdvantageSettings.from_options({"scale_rewards": None}) == AdvantageSettings()


def test_advantage_pattern_classes() -> None:
    assert advantage_pattern([0.5, -0.5, 0.5, 1.0]) == [0, 1, 0, 2]
    assert advantage_pattern([1.0, 1.0 + 1e-12, 2.0], tolerance=1e-9) == [0, 0, 1]


# -- real GRPOTrainer runs: the library's classification against TRL's own advantages --------------------
TRL_NOISE = 1e-3  # TRL's float32 advantages of equal non-dyadic rewards reach ~6e-4 (docs/theory.md §1)


def _hit(completion: str) -> float:
    return float(completion[:1] in "01234")


def _digit(prompt: str) -> int:
    return int(prompt[0])


def mixed(prompts, completions, **_):
    """Varies within a group for prompts 0-4, constant 1.0 for prompts 5-9."""
    return [_hit(c) if _digit(p) < 5 else 1.0 for p, c in zip(prompts, completions, strict=True)]


def gdpo_first(prompts, completions, **_):
    return [_hit(c) if _digit(p) < 5 else 1.0 for p, c in zip(prompts, completions, strict=True)]


def gdpo_second(prompts, completions, **_):
    # 2·(1 − first): with weights [2, 1] the weighted sum is 2 for every rollout
    return [2.0 * (1.0 - _hit(c)) if _digit(p) < 5 else 0.0 for p, c in zip(prompts, completions, strict=True)]


def sparse(prompts, completions, **_):
    """Prompts 0-1: one scored rollout per group; prompt 2: none; others: varied, with some None."""
    out = []
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        d = _digit(p)
        if d < 2:
            out.append(_hit(c) if i % 4 == 0 else None)
        elif d == 2:
            out.append(None)
        else:
            out.append(None if i % 4 == 1 else _hit(c) + 0.5 * (d % 2))
    return out


def near(prompts, completions, **_):
    """0.50-0.56 (one level of 4 over (0, 1)) for prompts 0-4, 0.5 for the others."""
    return [
        0.5 + 0.02 * ("0123456789".find(c[:1]) % 4) if _digit(p) < 5 else 0.5
        for p, c in zip(prompts, completions, strict=True)
    ]


def non_dyadic(prompts, completions, **_):
    """0.7 for prompts 5-9: TRL's float32 std of eight equal 0.7s is ~6e-8, not 0 (research/trl.md A1)."""
    return [_hit(c) if _digit(p) < 5 else 0.7 for p, c in zip(prompts, completions, strict=True)]


def random_third(prompts, completions, **_):
    return [float(len(c) % 3) for c in completions]


def plain_hit(prompts, completions, **_):
    return [_hit(c) for c in completions]


CASES = {
    "group": ([mixed], {}, {}),
    "batch": ([mixed], {"scale_rewards": "batch"}, {}),
    "none": ([mixed], {"scale_rewards": "none"}, {}),
    "true": ([mixed], {"scale_rewards": True}, {}),
    "false": ([mixed], {"scale_rewards": False}, {}),
    "normalize_then_sum": (
        [gdpo_first, gdpo_second],
        {"multi_objective_aggregation": "normalize_then_sum", "reward_weights": [2.0, 1.0]},
        {},
    ),
    "sum_then_normalize_same_rewards": ([gdpo_first, gdpo_second], {"reward_weights": [2.0, 1.0]}, {}),
    "none_and_tiny_groups": ([sparse], {}, {}),
    "none_and_tiny_groups_batch": ([sparse], {"scale_rewards": "batch"}, {}),
    "zero_and_negative_weights": ([plain_hit, plain_hit, random_third], {"reward_weights": [1.0, -1.0, 0.0]}, {}),
    "quantised": ([near], {}, {"reward_levels": 4, "reward_range": (0.0, 1.0)}),
    "float32_ties": ([non_dyadic], {"num_generations": 8, "per_device_train_batch_size": 32}, {}),
}


def run_case(tmp_path, name):
    from helpers import grpo_trainer

    from lora_rl_plugins.integrations.trl import LoraRLCallback

    funcs, config, options = CASES[name]
    config = dict(config)
    generations = config.pop("num_generations", 4)
    batch = config.pop("per_device_train_batch_size", 16)
    trainer = grpo_trainer(funcs, tmp_path, steps=2, batch=batch, generations=generations, **config)
    callback = LoraRLCallback(trainer, load_entry_points=False, kl_every=1000, **options)
    trainer.add_callback(callback)
    plugin = callback.host.plugin("bandwidth")
    seen: list[dict] = []
    account = plugin.account

    def recording_account(batch_):
        accounts = account(batch_)
        seen.append({"batch": batch_, "accounts": accounts})
        return accounts

    plugin.account = recording_account
    generate = trainer._generate_and_score_completions

    def recording_generate(inputs):
        output = generate(inputs)
        seen[-1]["trl_advantages"] = output["advantages"].tolist()  # TRL's own values (one process: all)
        seen[-1]["trl_frac_zero_std"] = trainer._metrics["train"]["frac_reward_zero_std"][-1]
        return output

    trainer._generate_and_score_completions = recording_generate
    trainer.train()
    logged = [e["bandwidth/zero_info_frac"] for e in trainer.state.log_history if "bandwidth/zero_info_frac" in e]
    return trainer, seen, logged, generations


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_zero_information_groups_are_where_trls_advantages_are_zero(tmp_path, name) -> None:
    pytest.importorskip("trl")
    trainer, seen, logged, k = run_case(tmp_path, name)
    assert len(seen) == 2 and len(logged) == 2
    window = []
    for record, logged_frac in zip(seen, logged, strict=True):
        trl = record["trl_advantages"]
        trl_zero = [max(abs(a) for a in trl[g : g + k]) <= TRL_NOISE for g in range(0, len(trl), k)]
        window.append((trl_zero.count(False), len(trl_zero)))
        ours = [account.zero_info for account in record["accounts"]]
        assert ours == trl_zero, (name, trl)
        assert logged_frac == pytest.approx(sum(trl_zero) / len(trl_zero))
        for account, zero in zip(record["accounts"], trl_zero, strict=True):
            assert (account.estimate == 0.0) if zero else (account.estimate > 0.0 or account.scored < 2)
        # the library's reproduction of TRL's own metric, and where the two fractions differ
        batch = record["batch"]
        settings = trainer.scale_rewards, trainer.multi_objective_aggregation
        reproduced = grpo_advantages(batch.rewards, k, batch.reward_weights, AdvantageSettings(*settings))
        assert reproduced.advantages == pytest.approx(trl, abs=TRL_NOISE)
        if name != "float32_ties":
            assert reproduced.frac_reward_zero_std == pytest.approx(record["trl_frac_zero_std"])
    # the learning room's "informative" (ledger, signal exhaustion) is the same test against TRL's advantages
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, LoraRLCallback))
    assert callback.host.plugin("learning").window == window
    # each case holds the situation it stands for (its witness)
    groups = [
        (account, [row for row in r["batch"].rewards[g * k : (g + 1) * k]], r["trl_advantages"][g * k : (g + 1) * k])
        for r in seen
        for g, account in enumerate(r["accounts"])
    ]
    zero = [account.zero_info for account, _, _ in groups]
    if name in ("sum_then_normalize_same_rewards", "zero_and_negative_weights"):
        assert all(zero)  # the weighted sum is constant: TRL's advantages are 0 everywhere
    else:
        assert any(zero) and not all(zero)
    if name == "normalize_then_sum":  # the weighted sum is constant (2) but GDPO's advantages are not 0
        assert any(len({2 * a + b for a, b in rows}) == 1 and not acc.zero_info for acc, rows, _ in groups)
    if name == "quantised":  # one level of 4 over (0, 1), yet the advantages are not 0
        assert any(len({round(r[0] * 3) for r in rows}) == 1 and not acc.zero_info for acc, rows, _ in groups)
    if name.startswith("none_and_tiny_groups"):
        assert any(acc.rule == "too_small" for acc, _, _ in groups)
    if name == "float32_ties":  # TRL's float32 leaves ~6e-4 where the exact advantage is 0
        assert any(0 < max(abs(a) for a in adv) <= TRL_NOISE for _, _, adv in groups)
    fractions = [r["trl_frac_zero_std"] for r in seen]
    if name in ("batch", "normalize_then_sum", "none_and_tiny_groups_batch"):
        assert set(fractions) <= {0.0, 1.0}  # one batch-wide std: all or nothing
    if name in ("none_and_tiny_groups", "float32_ties"):
        assert sum(fractions) < sum(logged)  # NaN std (< 2 scored) and float32 noise are never "zero std" in TRL


def test_a_lightning_module_declares_its_advantage_settings() -> None:
    from lora_rl_plugins.bridge.grpo_output import advantage_options

    class Module:
        scale_rewards = "batch"
        advantage_epsilon = 1e-6

    options = advantage_options(Module())
    assert options == {"scale_rewards": "batch", "advantage_epsilon": 1e-6}
    assert AdvantageSettings.from_options(options) == AdvantageSettings("batch", "sum_then_normalize", 1e-6)
    assert AdvantageSettings.from_options(advantage_options(object())) == AdvantageSettings()  # TRL's defaults
