"""The README stays true: its test command is what CI runs, and its metric table is complete."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_metric_kinds() -> dict[str, str]:
    rows = re.findall(r"^\| `([a-z0-9_]+/[a-z0-9_<>/]+)` \| (\w+) \|", README, flags=re.MULTILINE)
    return dict(rows)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README
    assert "python -m pytest" in ci


def test_every_builtin_metric_is_in_the_readme_with_its_kind() -> None:
    from lora_rl_plugins.bandwidth.plugin import BANDWIDTH_METRICS
    from lora_rl_plugins.kl.monitor import KL_METRICS
    from lora_rl_plugins.learning.plugin import LEARNING_METRICS

    documented = readme_metric_kinds()
    for info in (*BANDWIDTH_METRICS, *KL_METRICS, *LEARNING_METRICS):
        assert documented.get(info.name) == info.kind, info.name


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is part of the dev extra")
def test_ruff_clean() -> None:
    done = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_option_table_is_generated_from_the_configs() -> None:
    from lora_rl_plugins.bridge.options import options_table

    start, end = README.index("<!-- options:start -->\n"), README.index("<!-- options:end -->")
    assert README[start + len("<!-- options:start -->\n") : end].strip() == options_table()


@pytest.mark.parametrize(
    ("term", "definition"),
    [
        ("log2(M+1)", "M is the number of distinct final answers in a group of rollouts"),
        ("log2 A_t", "A_t is the number of values the reward of token t can take"),
        ("probe set", "The probe set is a fixed list of prompts whose answers you give"),
        ("1.5× target", "(The target: plain GRPO needs at least 1.5 times the rollouts"),
        ("KL(policy || base)", "its reference is the base model with the adapters disabled unless `kl_reference`"),
    ],
)
def test_terms_are_defined_where_first_used(term, definition) -> None:
    """A term a reader meets first (M, A_t, the probe set, the 1.5× target, which KL) is defined in the same
    paragraph, outside generated output blocks."""
    prose = re.sub(r"<!-- output: .*?<!-- /output -->", "", README, flags=re.S)
    first = prose.index(term)
    paragraph = prose[prose.rfind("\n\n", 0, first) : prose.find("\n\n", first)]
    assert " ".join(definition.split()) in " ".join(paragraph.split()), (term, paragraph)
