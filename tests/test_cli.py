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


@pytest.mark.parametrize(
    ("argv", "messages"),
    [
        (
            ["--hidden-size", "576", "--bits", "600", "--target-modules", "q_proj"],
            ["--target-modules has no effect with --hidden-size", "give --model-config (the model's config.json)"],
        ),
        (
            ["--hidden-size", "576", "--bits", "600", "--vllm", "--max-loras", "4"],
            ["--max-loras has no effect with --hidden-size", "give --model-config with --vllm"],
        ),
        (
            ["--model-config", "CONFIG", "--bits", "600", "--max-loras", "4"],
            ["--max-loras has no effect without --vllm", "add --vllm"],
        ),
        (
            ["--hidden-size", "576", "--bits", "600", "--episodes", "100", "--margin", "3"],
            [
                "--episodes has no effect with --bits (the bits are given, not planned): drop --bits",
                "--margin has no effect with --bits",
                "multiply --bits by your margin yourself",
            ],
        ),
        (
            ["--hidden-size", "576", "--bits", "600", "--epochs", "2", "--reward-levels", "2"],
            ["--epochs has no effect with --bits", "--reward-levels has no effect with --bits"],
        ),
        (
            [
                "--hidden-size",
                "576",
                "--episodes",
                "600",
                "--steps",
                "4",
                "--rollouts-per-step",
                "8",
                "--reward-levels",
                "2",
            ],
            ["--steps has no effect with --episodes", "--rollouts-per-step has no effect with --episodes"],
        ),
        (
            [
                "--hidden-size",
                "576",
                "--dataset-size",
                "10",
                "--generations",
                "4",
                "--steps",
                "4",
                "--reward-levels",
                "2",
            ],
            ["--steps has no effect with --dataset-size with --generations", "or --steps with --rollouts-per-step"],
        ),
        (
            [
                "--hidden-size",
                "576",
                "--steps",
                "4",
                "--rollouts-per-step",
                "8",
                "--epochs",
                "3",
                "--reward-levels",
                "2",
            ],
            ["--epochs has no effect with --steps with --rollouts-per-step"],
        ),
        (
            ["--hidden-size", "576", "--episodes", "600", "--reward-levels", "2", "--bits-per-episode", "0.5"],
            ["--reward-levels has no effect with --bits-per-episode", "give one of them"],
        ),
    ],
)
def test_rank_refuses_flags_without_effect(argv, messages, capsys, tmp_path) -> None:
    """A flag `lora-rl rank` accepts but that changes nothing in the mode given is bad input (exit 2), named,
    with what to give instead, never silently ignored."""
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "llama"}')  # never read: the refusal comes first
    code, out, err = run(["rank", *(str(config) if a == "CONFIG" else a for a in argv)], capsys)
    assert code == 2 and out == "", (code, err)
    for message in messages:
        assert message in err, err


def test_rank_flags_that_do_have_an_effect_are_accepted(capsys) -> None:
    """The checks refuse only what changes nothing: a plan's own flags, --bits-per-param and --vllm are used."""
    code, out, _ = run(
        [
            "rank",
            "--hidden-size",
            "576",
            "--dataset-size",
            "10",
            "--generations",
            "4",
            "--epochs",
            "3",
            "--reward-levels",
            "2",
            "--margin",
            "1",
        ],
        capsys,
    )
    assert code == 0 and "120 episodes × 1 bits/episode (log2 of 2 reward levels) × safety margin 1 = 120 bits" in out
    code, out, _ = run(["rank", "--hidden-size", "576", "--bits", "600", "--bits-per-param", "2"], capsys)
    # 2·r·d parameters at 2 bits each: 4·r·d (the rule line says so, not the default's 64·r·d)
    assert code == 0 and "seed rule 4·r·d >= bits with d = 576" in out and "2,304 " in out


def test_rank_says_when_memory_is_not_estimated_and_why(capsys) -> None:
    code, out, _ = run(["rank", "--hidden-size", "576", "--bits", "600", "--vllm"], capsys)
    assert code == 0
    assert (
        "memory:       not estimated (the seed rule has no model, and vLLM's LoRA buffers are sized by the "
        "model's modules: give --model-config and --vllm)"
    ) in out
    code, out, _ = run(["rank", "--hidden-size", "576", "--bits", "600", "--json"], capsys)
    assert code == 0 and '"vllm_lora_memory_note": "the seed rule has no model' in out


def test_rank_memory_line_with_a_model_config(capsys, tmp_path) -> None:
    pytest.importorskip("peft")
    from lora_rl_plugins.demo.model import build_tiny_model

    build_tiny_model().config.save_pretrained(tmp_path)
    code, out, _ = run(["rank", "--model-config", str(tmp_path), "--bits", "600"], capsys)
    assert code == 0
    assert "memory:       not estimated (vLLM's LoRA buffers, sized by max_lora_rank and not by r, are " in out
    code, out, _ = run(["rank", "--model-config", str(tmp_path), "--bits", "600", "--vllm", "--max-loras", "2"], capsys)
    assert code == 0 and "memory:       vLLM pre-allocates ~" in out and "not estimated" not in out


def test_seed_rule_advice_names_no_modules(capsys) -> None:
    """Under the seed rule there are no real modules: no advice to adapt more of them; give the model instead."""
    code, out, _ = run(["rank", "--hidden-size", "4096", "--bits", "1e9"], capsys)
    assert code == 0 and "near full rank: r = 3815 is 93% of the full rank 4096" in out
    assert "Give the model (--model-config: the adapter rule counts every matrix the adapter trains)" in out
    assert "modules" not in out.split("near full rank")[1].split("memory:")[0]
    code, _, err = run(["rank", "--hidden-size", "576", "--bits", "6e7"], capsys)
    assert code == 1 and "no LoRA adapter of one d x d matrix holds that much. Give the model (--model-config" in err
    assert "Adapt more modules" not in err and "target" not in err
    code, _, err = run(["rank", "--hidden-size", "576", "--bits", "1e6", "--max-lora-rank", "16"], capsys)
    assert code == 1 and "hold the bits at a lower rank: give the model (--model-config" in err
    assert "modules" not in err


def test_adapter_rule_advice_names_the_modules(capsys, tmp_path) -> None:
    pytest.importorskip("peft")
    from lora_rl_plugins.demo.model import build_tiny_model

    build_tiny_model().config.save_pretrained(tmp_path)
    code, _, err = run(["rank", "--model-config", str(tmp_path), "--bits", "1e12"], capsys)
    assert (
        code == 1 and "no LoRA adapter of these modules holds that much. Adapt more modules (--target-modules)" in err
    )


def test_report_of_a_missing_run_says_what_it_expects_and_how_to_make_one(capsys) -> None:
    code, out, err = run(["report", "/no/such/dir"], capsys)
    assert code == 2 and out == "", err
    assert err.startswith("lora-rl report: no run at /no/such/dir: give a run directory holding lora_rl_metrics.jsonl")
    assert "To make one: lora-rl demo --output-dir runs/demo, then lora-rl report runs/demo" in err


def test_report_of_a_directory_without_a_run_says_the_same(capsys, tmp_path) -> None:
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2 and f"no lora-rl-plugins metrics under {tmp_path}" in err, err
    assert "give a run directory holding lora_rl_metrics.jsonl" in err and "lora-rl demo --output-dir" in err


def test_check_vllm_says_exactly_what_it_checked(capsys, tmp_path) -> None:
    """ "config and weights" only when the weight names were checked: a bare adapter_config.json is the config
    only; a saved adapter's adapter_model.safetensors is named; without it, the weights PEFT builds are."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model

    base = build_tiny_model()
    base.config.save_pretrained(tmp_path / "base")
    base.name_or_path = "tiny-org/not-in-any-cache"  # the base model is not found: checked partly
    adapter = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    config_only = tmp_path / "adapter" / "adapter_config.json"

    code, out, _ = run(["check-vllm", str(config_only), "--max-lora-rank", "16"], capsys)
    assert code == 3 and "'s adapter config only (no adapter_model.safetensors: weight names not checked)" in out
    assert "config and weights" not in out

    code, out, _ = run(["check-vllm", str(tmp_path / "adapter"), "--max-lora-rank", "16"], capsys)
    assert code == 3 and "'s config and saved weights (adapter_model.safetensors), but the base model's" in out

    base_config = str(tmp_path / "base" / "config.json")
    code, out, _ = run(["check-vllm", str(config_only), "--max-lora-rank", "16", "--model-config", base_config], capsys)
    assert code == 0 and "(checked: its config and the weights PEFT builds for it on the base model" in out
    code, out, _ = run(
        ["check-vllm", str(tmp_path / "adapter"), "--max-lora-rank", "16", "--model-config", base_config], capsys
    )
    assert (
        code == 0 and "(checked: its config and saved weights (adapter_model.safetensors) and the base model's" in out
    )
