"""A third-party plugin installed by entry point takes an option, and its metric reaches the run log and the
report with no code here (issue 21): the plugin is a tiny package with a dist-info made in tmp, on sys.path."""

from __future__ import annotations

import json
import textwrap

import pytest

PLUGIN = """
from dataclasses import dataclass

from lora_rl_plugins.plugin.config import option
from lora_rl_plugins.plugin.hookspecs import hookimpl
from lora_rl_plugins.plugin.metrics import metric_family

_m = metric_family("third_party")


@dataclass
class Config:
    tp_scale: float = option(1.0, doc="multiplies the rollouts counted")


class RolloutCounter:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.config, self.rollouts = config, 0

    @hookimpl
    def on_rollouts_scored(self, batch):
        self.rollouts += len(batch.rewards)

    @hookimpl
    def collect_metrics(self):
        return {"third_party/scaled_rollouts": self.config.tp_scale * self.rollouts}

    @hookimpl
    def describe_metrics(self):
        return [_m("scaled_rollouts", "exact", "rollouts", "rollouts scored over the run times tp_scale")]
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "tp_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "tp_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "tp_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-plugin\nVersion: 0.1\n")
    (site / "tp_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[lora_rl_plugins]\nrollout_counter = tp_plugin:RolloutCounter\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_point_plugin_option_reaches_run_log_and_report(installed, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from lora_rl_plugins.bridge.options import PluginOptions
    from lora_rl_plugins.bridge.runlog import RUN_LOG_NAME
    from lora_rl_plugins.bridge.session import RunSession
    from lora_rl_plugins.plugin.collective import SingleProcess
    from lora_rl_plugins.plugin.events import RunStarted
    from lora_rl_plugins.report.page import write_report
    from lora_rl_plugins.report.runlog import load_run

    options = PluginOptions(tp_scale=2.5, block=["kl_monitor"])
    assert options.plugin_configs["rollout_counter"].tp_scale == 2.5
    session = RunSession(options, source="test")
    assert "rollout_counter" in session.host.plugin_names
    out = tmp_path / "run"
    session.start(RunStarted("test", group_size=2, total_steps=2), torch.nn.Linear(2, 2), log_dir=str(out))
    for step in (1, 2):
        session.rollouts_scored(
            SingleProcess(), step=step, rewards=[[1.0], [0.0], [1.0], [1.0]], reward_names=["r"],
            reward_weights=[1.0], group_size=2,
        )  # fmt: skip
        decision = session.step_ended(step, 2)
        session.log(step, decision.console)
    session.end()
    expected = 2.5 * 2 * 4  # tp_scale × (2 batches × 4 rollouts): exact
    records = [json.loads(line) for line in (out / RUN_LOG_NAME).read_text().splitlines()]
    mine = [r for r in records if r["name"] == "third_party/scaled_rollouts"]
    assert [r["value"] for r in mine] == [2.5 * 4, expected]
    assert mine[0]["kind"] == "exact" and mine[0]["unit"] == "rollouts"
    assert any(r.get("info", {}).get("name") == "third_party/scaled_rollouts" for r in records)
    run = load_run(out)
    assert run.infos["third_party/scaled_rollouts"].definition == "rollouts scored over the run times tp_scale"
    page = write_report(out).read_text()
    assert "third_party/scaled_rollouts" in page and "rollouts scored over the run times tp_scale" in page


def test_entry_point_option_unknown_without_the_plugin(installed) -> None:
    from lora_rl_plugins.bridge.options import PluginOptions

    with pytest.raises(TypeError, match="unknown lora_rl_plugins option 'tp_scale'"):
        PluginOptions(tp_scale=2.0, load_entry_points=False)
    with pytest.raises(TypeError, match="unknown lora_rl_plugins option 'tp_scale'"):
        PluginOptions(tp_scale=2.0, block=["rollout_counter"])
