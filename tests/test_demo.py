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
