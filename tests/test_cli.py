"""The command line's exit-code contract (0 ok, 1 the command's own "no", 2 bad input or usage, 3 check-vllm
checked only partly) and its messages: every bad flag is named (issue 25 item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_rl_plugins.cli import EXIT_CODES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``lora-rl argv``, whether it returns or exits through argparse."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--rank", "0"], "argument --rank: must be an integer >= 1, got 0"),
        (["demo", "--steps", "-3"], "argument --steps: must be an integer >= 1, got -3"),
        (
            ["demo", "--kl-budget", "-1"],
            "argument --kl-budget: must be a number of nats per token >= 0 (0 turns the budget off), got -1",
        ),
        (["demo", "--kl-budget", "nan"], "argument --kl-budget: must be a number of nats per token >= 0"),
        (["demo", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
        (["demo", "--rank", "eight"], "argument --rank: expected an integer >= 1, got 'eight'"),
        (["rank"], "give exactly one of --hidden-size (seed rule) or --model-config (adapter rule)"),
        (["rank", "--hidden-size", "576"], "lora-rl rank: the plan needs --episodes"),
        (["rank", "--hidden-size", "0", "--bits", "600"], "argument --hidden-size: must be an integer >= 1"),
        (["rank", "--hidden-size", "576", "--bits", "-5"], "argument --bits: must be a number of bits >= 0, got -5"),
        (["rank", "--hidden-size", "576", "--bits", "600", "--margin", "0.5"], "argument --margin: must be a safety"),
        (
            ["rank", "--hidden-size", "576", "--bits", "600", "--max-lora-rank", "0"],
            "argument --max-lora-rank: must be an integer >= 1",
        ),
        (["check-vllm", "/no/such/dir", "--max-lora-rank", "16"], "argument path: /no/such/dir does not exist"),
        (["check-vllm", str(ROOT / "pyproject.toml")], "the following arguments are required: --max-lora-rank"),
        ([], "the following arguments are required: command"),
        (["rank", "--hidden-size", "576", "--episodes", "100"], "lora-rl rank: "),  # the plan's own error, as flags
    ],
)
def test_bad_input_exits_2_naming_the_flag(argv, message, capsys) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2, (code, err)
    assert message in err, err
    assert out == ""


def test_usage_errors_print_the_usage(capsys) -> None:
    code, _, err = run(["rank"], capsys)
    assert code == 2 and err.startswith("usage: lora-rl rank")


def test_report_of_a_missing_run_exits_2(capsys, tmp_path) -> None:
    code, _, err = run(["report", str(tmp_path / "nothing")], capsys)
    assert code == 2 and err.startswith("lora-rl report: no run at "), err


def test_rank_that_no_server_rank_fits_is_the_commands_no(capsys) -> None:
    code, _, err = run(["rank", "--hidden-size", "576", "--bits", "1e6", "--max-lora-rank", "16"], capsys)
    assert code == 1, err
    assert "above --max-lora-rank 16; serve with --max-lora-rank 32" in err, err


def test_rank_with_the_servers_max_lora_rank_says_what_it_serves(capsys) -> None:
    code, out, _ = run(["rank", "--hidden-size", "576", "--bits", "600", "--vllm", "--max-lora-rank", "16"], capsys)
    assert code == 0
    assert (
        "vLLM:         the server's max_lora_rank=16 serves r=1; any r up to 16 costs the same GPU memory there "
        "(vLLM sizes its LoRA buffers by max_lora_rank, not r)"
    ) in out
    assert "up to 1 costs" not in out and "max_lora_rank >= 1" not in out
    code, out, _ = run(["rank", "--hidden-size", "576", "--bits", "600", "--vllm"], capsys)
    assert code == 0
    assert "serve with max_lora_rank >= 1 (the smallest legal value >= 1); it serves any r up to 1 at the same " in out
    assert "max_lora_rank=8 would serve any r up to 8" in out


def test_help_states_the_exit_codes() -> None:
    parser = build_parser()
    assert "exit codes: 0 ok; 1 the command's own" in " ".join(parser.format_help().split())
    for name in ("demo", "rank", "check-vllm", "report"):
        sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and name in a.choices)
        assert " ".join(EXIT_CODES.split()) in " ".join(sub.choices[name].format_help().split())


def test_the_installed_command_exits_2_on_a_missing_adapter_directory() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "lora_rl_plugins.cli", "check-vllm", "/no/such/dir", "--max-lora-rank", "16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "/no/such/dir does not exist" in done.stderr


def test_check_vllm_on_a_directory_without_an_adapter_exits_2(capsys, tmp_path) -> None:
    code, _, err = run(["check-vllm", str(tmp_path), "--max-lora-rank", "16"], capsys)
    assert code == 2 and "has no adapter_config.json" in err, err
