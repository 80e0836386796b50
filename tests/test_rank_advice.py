"""Rank advice that says what limits a run (issue 25 item 2): the signal when nothing was learned, the capacity
when what was absorbed approaches it, otherwise the rule's rank with what was measured about lower ranks."""

from __future__ import annotations

import pytest

from lora_rl_plugins.planning.advice import SHORT_RUN_STEPS
from lora_rl_plugins.planning.rank import MEASURED_LOWER_RANKS, advise_rank, serving_note

# the demo's adapter: r = 8, 524,288 bits of capacity (65,536 per unit of r)
DEMO = dict(rank=8, capacity_bits=524_288.0, rank_sufficient=1)


def test_flat_reward_names_the_signal_as_the_limit() -> None:
    advice = advise_rank(**DEMO, signal_bits=0.0, reward_first=0.12, reward_last=0.12, absorbed_bits=0.0)
    assert advice.limit == "signal" and advice.rank == 8
    text = " ".join(advice.lines)
    assert text.startswith("too little signal to judge a rank: the reward did not move (0.12 -> 0.12)")
    assert "The limit is the signal, not the rank" in text and "a lower rank would not help" in text
    assert "r=1 would hold" not in text


def test_nothing_absorbed_names_the_signal_even_when_the_reward_moved() -> None:
    advice = advise_rank(**DEMO, signal_bits=300.0, reward_first=0.13, reward_last=0.37, absorbed_bits=-6.2)
    assert advice.limit == "signal"
    assert "the policy absorbed -6.2 bits on the probes" in advice.lines[0]


def test_signal_far_below_one_rank_names_the_signal() -> None:
    advice = advise_rank(**DEMO, signal_bits=3.0)  # 65,536 bits at r=1: 3 bits is far below (< 1e-4 of it)
    assert advice.limit == "signal"
    assert "the signal is 3 bits against 65,536 that r=1 holds" in advice.lines[0]


def test_near_capacity_says_raise_the_rank() -> None:
    advice = advise_rank(rank=1, capacity_bits=1000.0, rank_sufficient=2, signal_bits=1500.0, absorbed_bits=600.0)
    assert advice.limit == "capacity" and advice.rank == 2
    assert advice.lines[0] == (
        "near capacity: 600 bits absorbed (exact, on the probes) is 60% of the 1,000 bits r=1 holds: raise the rank "
        "(r=2 holds 2,000)"
    )


def test_otherwise_the_rules_rank_with_what_was_measured_about_lower_ranks() -> None:
    advice = advise_rank(**DEMO, signal_bits=621.0, reward_first=0.13, reward_last=0.79, absorbed_bits=24.2)
    assert advice.limit == "rule" and advice.rank == 1
    first = "r=1 would hold the 621 bits of signal (its capacity, 65,536 bits, is 106x the signal;"  # 65,536 / 621
    assert advice.lines[0].startswith(first)
    assert MEASURED_LOWER_RANKS["command"] in advice.lines[1]
    assert "r=1: 0.37/0.68/0.69, r=8: 0.87/0.85/0.80, r=32: 0.73/0.87/0.82" in advice.lines[1]
    assert advice.lines[1].endswith("keep r=8, or retune the learning rate before lowering it")


@pytest.mark.parametrize(
    ("rank", "server", "effective", "expected"),
    [
        (8, 16, None, "vLLM: the server's max_lora_rank=16 serves r=8; any r up to 16 costs the same GPU memory"),
        (32, 16, None, "vLLM: r=32 exceeds the server's max_lora_rank=16: vLLM refuses it (start it with "),
        (8, 16, 16, "vLLM: the server's max_lora_rank=16 serves r=8 (largest per-matrix rank 16)"),
        (1, None, None, "vLLM: serve with max_lora_rank >= 1 (the smallest legal value >= 1); it serves any r up to 1"),
    ],
)
def test_serving_note(rank, server, effective, expected) -> None:
    assert serving_note(rank, server, effective).startswith(expected)


def test_advice_with_a_server_rank_refuses_a_rank_above_it() -> None:
    advice = advise_rank(rank=32, capacity_bits=32_000.0, rank_sufficient=1, signal_bits=600.0, max_lora_rank=16)
    assert advice.lines[-1].startswith("vLLM: r=32 exceeds the server's max_lora_rank=16: vLLM refuses it")


def test_short_run_whose_reward_did_not_rise_says_train_longer() -> None:
    """20 steps of the demo (`lora-rl demo --steps 20`: 132 bits of signal, reward 0.08 -> 0.06): too short to
    judge a rank, so the advice is more steps, not a rank change, and not a verdict on the signal either."""
    advice = advise_rank(**DEMO, signal_bits=132.0, reward_first=0.08, reward_last=0.06, absorbed_bits=4.0, steps=20)
    assert advice.limit == "steps" and advice.rank == 8
    text = " ".join(advice.lines)
    assert text.startswith("too short to judge a rank: the reward did not rise over 20 steps (0.08 -> 0.06)")
    assert "Train longer (more steps; the demo's task was measured over 300) before changing the rank" in text
    assert "r=1 would hold" not in text and "raise the rank" not in text and "lower rank" not in text
    assert SHORT_RUN_STEPS == 100
    # the same numbers over a long run (or with the steps unknown): the existing branches decide, as before
    long_run = advise_rank(**DEMO, signal_bits=132.0, reward_first=0.08, reward_last=0.06, absorbed_bits=4.0, steps=300)
    unknown = advise_rank(**DEMO, signal_bits=132.0, reward_first=0.08, reward_last=0.06, absorbed_bits=4.0)
    assert long_run == unknown and long_run.limit != "steps"
    # a short run whose reward rose is judged as before (the rule's rank)
    assert advise_rank(**DEMO, signal_bits=621.0, reward_first=0.13, reward_last=0.79, steps=20).limit == "rule"
    # no signal at all (every group's rewards equal): more steps would not help, the signal is the limit
    flat = advise_rank(**DEMO, signal_bits=0.0, reward_first=0.0, reward_last=0.0, steps=4)
    assert flat.limit == "signal"
