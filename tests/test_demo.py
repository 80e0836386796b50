"""The main job, `lora-rl demo`, runs end to end (a few steps here; the full run is in the README)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow


def test_demo_command_prints_the_summary(capsys, tmp_path) -> None:
    from lora_rl_plugins.cli import main

    assert main(["demo", "--steps", "3", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for line in ("reward", "signal per step", "signal", "absorbed", "to learn", "prompts", "adapter", "rank advice"):
        assert line in out


def test_demo_summary_fits_the_width_and_the_report_names_the_budget_crossing(tmp_path) -> None:
    """A short demo run with a budget it crosses: the summary (wrapped to 100 columns, training time apart
    from setup) and the report list the same events, the crossing first (issue 25 item 4)."""
    from lora_rl_plugins.demo.run import format_summary, run_demo
    from lora_rl_plugins.report import write_report

    result = run_demo(
        steps=6, kl_budget=1e-6, output_dir=str(tmp_path), progress=False, callback_options={"kl_every": 2}
    )
    assert result.budget_crossed is not None and not result.stopped
    step, kl = result.budget_crossed
    assert result.events[0] == (
        f"KL budget crossed at step {step}: KL(policy || reference) {kl:.2f} > budget 1e-06 nats/token (exact, the "
        "mean per measured token)"
    )
    summary = format_summary(result, width=100)
    assert all(len(line) <= 100 for line in summary.splitlines()), summary
    assert f"training {result.train_seconds:.0f} s (+ " in summary.splitlines()[1]
    assert result.train_seconds is not None and result.train_seconds < result.seconds
    flat = " ".join(summary.split())
    for event in result.events:
        assert " ".join(event.split()) in flat  # wrapped, but every word of every event is there
    import html

    page = write_report(tmp_path).read_text()
    assert page.index("What happened.") < page.index("Rank advice.")
    for event in result.events:
        assert html.escape(event) in page


def test_flat_reward_run_names_the_signal_as_the_limit(tmp_path) -> None:
    """A run whose reward never moves: the rank advice names the signal, not a lower rank (issue 25 item 2)."""
    from lora_rl_plugins.demo.run import format_summary, run_demo
    from lora_rl_plugins.demo.setup import tiny_setup

    setup = tiny_setup(0)

    def no_reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    setup.task.reward = no_reward
    result = run_demo(steps=4, kl_budget=None, output_dir=str(tmp_path), progress=False, setup=setup)
    summary = " ".join(format_summary(result, width=100).split())
    assert "rank advice too little signal to judge a rank: the reward did not move (0.00 -> 0.00)" in summary
    assert "The limit is the signal, not the rank" in summary
    assert "would hold the" not in summary


def test_short_run_whose_reward_did_not_rise_says_train_longer(tmp_path) -> None:
    """A short run with a signal (rewards vary within every group) whose mean reward cannot rise: the advice is
    more steps, not a rank change (`lora-rl demo --steps 20` on a new user's machine)."""
    from lora_rl_plugins.demo.run import format_summary, run_demo
    from lora_rl_plugins.demo.setup import tiny_setup

    setup = tiny_setup(0)

    def half_right(prompts, completions, **kwargs):  # every group: half 1, half 0; the mean stays 0.5
        return [float(i % 2) for i in range(len(completions))]

    setup.task.reward = half_right
    result = run_demo(steps=10, kl_budget=None, output_dir=str(tmp_path), progress=False, setup=setup)
    summary = " ".join(format_summary(result, width=100).split())
    assert "rank advice too short to judge a rank: the reward did not rise over 10 steps (0.50 -> 0.50)" in summary
    assert "Train longer (more steps" in summary
    assert "would hold the" not in summary and "raise the rank" not in summary
