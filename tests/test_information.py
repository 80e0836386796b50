"""The information math against closed forms (THEORY.md §1) and Monte Carlo simulations of the
symbol-emitting bandit of seed 002."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from lora_rl_plugins.bandwidth.information import (
    binary_entropy,
    empirical_entropy,
    group_answer_bound,
    group_empirical_bits,
    group_uniform_prior_bits,
    quantise,
    rollout_bound,
    token_level_bound,
)


def plugin_mutual_information(pairs: list[tuple[object, object]]) -> float:
    """Plug-in estimate of I(X; Y) in bits from joint samples (x, y)."""
    n = len(pairs)
    joint = Counter(pairs)
    px = Counter(x for x, _ in pairs)
    py = Counter(y for _, y in pairs)
    return sum(c / n * math.log2(c * n / (px[x] * py[y])) for (x, y), c in joint.items())


# -- closed forms -------------------------------------------------------------------------------
def test_binary_entropy_closed_forms() -> None:
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    assert binary_entropy(0.25) == pytest.approx(0.8112781244591328)
    assert binary_entropy(0.1) == pytest.approx(binary_entropy(0.9))
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        binary_entropy(1.5)


def test_rollout_and_token_bounds() -> None:
    assert rollout_bound(2) == 1.0  # binary reward: one bit per rollout
    assert rollout_bound(4) == 2.0  # seed 001: 4-level rewards, 2 bits
    assert rollout_bound(1) == 0.0
    assert token_level_bound([2] * 7) == 7.0  # T bits for binary per-token rewards
    assert token_level_bound([2, 4, 8]) == 6.0
    with pytest.raises(ValueError):
        rollout_bound(0)


def test_group_bounds_closed_forms() -> None:
    assert group_answer_bound(0) == 0.0
    assert group_answer_bound(1) == 1.0
    assert group_answer_bound(3) == 2.0
    # uniform prior: log2 V - ((V-M)/V) log2 (V-M)
    assert group_uniform_prior_bits(0, 10) == pytest.approx(0.0)
    assert group_uniform_prior_bits(1, 10) == pytest.approx(math.log2(10) - 0.9 * math.log2(9))
    assert group_uniform_prior_bits(1, 10) == pytest.approx(binary_entropy(0.1))  # M=1 is one rollout's h(1/V)
    assert group_uniform_prior_bits(10, 10) == pytest.approx(math.log2(10))
    for v in (2, 5, 50, 1000):
        for m in range(0, min(v, 40) + 1):
            assert group_uniform_prior_bits(m, v) <= group_answer_bound(m) + 1e-12
    with pytest.raises(ValueError, match="more distinct answers"):
        group_uniform_prior_bits(11, 10)


def test_reference_numbers_of_theory() -> None:
    # MATH: 10,000 problems x 32 samples at 1 bit per completion ~ 320,000 bits.
    assert 10_000 * 32 * rollout_bound(2) == 320_000
    # Seed 001: N = 1000 episodes at 2 bits (4 levels) = 2000 bits; N = 10,000 -> 20,000.
    assert 1000 * rollout_bound(4) == 2000
    assert 10_000 * rollout_bound(4) == 20_000


def test_empirical_group_bits() -> None:
    assert group_empirical_bits([1, 1, 1, 1]) == 0.0
    assert group_empirical_bits([0, 1, 0, 1, 0, 1, 0, 1]) == 8.0  # K bits at p = 1/2
    assert group_empirical_bits([1, 0, 0, 0]) == pytest.approx(4 * binary_entropy(0.25))
    assert empirical_entropy([]) == 0.0
    assert empirical_entropy(["a", "b", "c", "d"]) == 2.0


def test_quantise() -> None:
    assert [quantise(x, 5, 0.0, 1.0) for x in (0.0, 0.1, 0.125, 0.5, 0.9, 1.0, 7.0, -3.0)] == [
        0,
        0,
        0,
        2,
        4,
        4,
        4,
        0,
    ]
    with pytest.raises(ValueError, match="low < high"):
        quantise(0.3, 4, 1.0, 1.0)


# -- Monte Carlo: the symbol-emitting bandit ----------------------------------------------------
@pytest.mark.parametrize("vocab", [2, 4, 8])
def test_single_rollout_information_is_h_of_one_over_v(vocab: int) -> None:
    """I(S; (T, r)) estimated from joint counts matches h(1/V) (seed 002, Figure 5)."""
    rng = random.Random(vocab)
    samples = []
    for _ in range(200_000):
        secret, token = rng.randrange(vocab), rng.randrange(vocab)  # tau independent of S
        samples.append((secret, (token, int(token == secret))))
    estimate = plugin_mutual_information(samples)
    assert estimate == pytest.approx(binary_entropy(1 / vocab), abs=0.01)
    assert estimate <= 1.0 + 0.01


@pytest.mark.parametrize(("vocab", "group"), [(10, 4), (10, 8), (20, 16), (5, 3)])
def test_group_information_matches_uniform_prior_formula(vocab: int, group: int) -> None:
    """For fixed final tokens with M distinct, H(r pattern | tokens) over S uniform matches the
    exact formula, and the group bound log2(M+1) holds (seed 002, Figure 6)."""
    rng = random.Random(vocab * 100 + group)
    for _ in range(5):
        tokens = [rng.randrange(vocab) for _ in range(group)]
        distinct = len(set(tokens))
        patterns = []
        for _ in range(40_000):
            secret = rng.randrange(vocab)
            patterns.append(tuple(int(t == secret) for t in tokens))
        measured = empirical_entropy(patterns)
        exact = group_uniform_prior_bits(distinct, vocab)
        assert measured == pytest.approx(exact, abs=0.02)
        assert measured <= group_answer_bound(distinct) + 0.02
        assert measured <= math.log2(group + 1) + 0.02


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_token_level_information_grows_as_t_bits(length: int) -> None:
    """Fair binary target bits s_t, policy bits x_t, R_t = 1{x_t = s_t}: I(S; (x, R)) = T bits."""
    rng = random.Random(length)
    samples = []
    for _ in range(150_000):
        secret = tuple(rng.randrange(2) for _ in range(length))
        emitted = tuple(rng.randrange(2) for _ in range(length))
        rewards = tuple(int(x == s) for x, s in zip(emitted, secret, strict=True))
        samples.append((secret, (emitted, rewards)))
    estimate = plugin_mutual_information(samples)
    assert estimate == pytest.approx(length, abs=0.02)
    assert estimate <= token_level_bound([2] * length) + 0.02
