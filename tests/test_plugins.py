"""The plugin manager: entry-point loading, blocking, third-party plugins, fault isolation."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from lora_rl_plugins import PluginHost, RolloutsScored, RunStarted, StepEnded, hookimpl, make_plugin_manager
from lora_rl_plugins.bandwidth import BandwidthPlugin


def install_entry_point_plugin(root: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str, value: str):
    """A real distribution on sys.path that declares ``name`` in the ``lora_rl_plugins`` group."""
    module = f"{name}_module"
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lora_rl_plugins]\n{name} = {module}:{value}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)


COUNTING_PLUGIN = """
from lora_rl_plugins import hookimpl

class CountingPlugin:
    def __init__(self):
        self.rollouts = 0
        self.steps = 0

    @hookimpl
    def on_rollouts_scored(self, batch):
        self.rollouts += len(batch.rewards)

    @hookimpl
    def on_step_end(self, step):
        self.steps += 1

    @hookimpl
    def collect_metrics(self):
        return {"counting/rollouts": self.rollouts}
"""


def scored(n: int = 4) -> RolloutsScored:
    return RolloutsScored(1, [[1.0], [0.0]] * (n // 2), ["f"], [1.0], 2)


def test_builtins_registered_by_default() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    assert isinstance(pm.get_plugin("bandwidth"), BandwidthPlugin)


def test_each_manager_is_independent() -> None:
    first = make_plugin_manager(load_entry_points=False)
    second = make_plugin_manager(load_entry_points=False)
    assert first.get_plugin("bandwidth") is not second.get_plugin("bandwidth")


def test_entry_point_plugin_is_loaded_and_receives_events(tmp_path, monkeypatch) -> None:
    install_entry_point_plugin(tmp_path, monkeypatch, "counting", COUNTING_PLUGIN, "CountingPlugin")
    host = PluginHost(make_plugin_manager())
    plugin = host.plugin("counting")
    assert type(plugin).__name__ == "CountingPlugin"  # a class is instantiated once per run
    host.on_rollouts_scored(scored(6))
    host.on_step_end(StepEnded(1))
    metrics = host.collect_metrics()
    assert plugin.rollouts == 6 and plugin.steps == 1
    assert metrics["counting/rollouts"] == 6
    assert "bandwidth/bits_step" in metrics  # built-ins unaffected
    assert "plugins/counting/ms_per_step" in metrics


def test_block_by_argument_and_environment(tmp_path, monkeypatch) -> None:
    install_entry_point_plugin(tmp_path, monkeypatch, "counting", COUNTING_PLUGIN, "CountingPlugin")
    assert not make_plugin_manager(block=["counting"]).has_plugin("counting")
    assert not make_plugin_manager(block=["bandwidth"]).has_plugin("bandwidth")
    monkeypatch.setenv("LORA_RL_PLUGINS_BLOCK", "counting, bandwidth")
    pm = make_plugin_manager()
    assert not pm.has_plugin("counting") and not pm.has_plugin("bandwidth")


def test_broken_entry_point_is_skipped_with_its_name(tmp_path, monkeypatch, caplog) -> None:
    install_entry_point_plugin(tmp_path, monkeypatch, "broken", "raise ImportError('no such dep')", "Plugin")
    with caplog.at_level(logging.ERROR, logger="lora_rl_plugins"):
        pm = make_plugin_manager()
    assert not pm.has_plugin("broken")
    assert "could not load plugin 'broken'" in caplog.text and "no such dep" in caplog.text


def test_hookimpl_with_wrong_signature_is_rejected() -> None:
    class Wrong:
        @hookimpl
        def on_step_end(self, step, extra):
            pass

    with pytest.raises(Exception, match="extra"):
        make_plugin_manager(extra=[Wrong()], load_entry_points=False)


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_rollouts_scored(self, batch):
        self.calls += 1
        raise RuntimeError("boom")


def test_faulty_third_party_plugin_is_reported_once_and_disabled(caplog) -> None:
    exploding = Exploding()
    host = PluginHost(make_plugin_manager(extra=[exploding], load_entry_points=False))
    host.on_run_start(RunStarted("test", 2))
    reference = PluginHost(make_plugin_manager(load_entry_points=False))
    with caplog.at_level(logging.ERROR, logger="lora_rl_plugins"):
        for h in (host, reference):
            for step in (1, 2, 3):
                h.on_rollouts_scored(scored())
                h.on_step_end(StepEnded(step))
    assert exploding.calls == 1
    assert caplog.text.count("raised in on_rollouts_scored") == 1
    assert "RuntimeError: boom" in caplog.text
    assert list(host.disabled) == ["Exploding"]  # the plugin's class names it in the report
    assert "'Exploding' raised in on_rollouts_scored" in caplog.text
    assert "boom" in host.disabled["Exploding"]
    bandwidth = {k: v for k, v in host.collect_metrics().items() if k.startswith("bandwidth/")}
    expected = {k: v for k, v in reference.collect_metrics().items() if k.startswith("bandwidth/")}
    assert bandwidth == expected


class Counter:
    """A stateful third-party plugin passed in code (``plugins=[...]``)."""

    def __init__(self) -> None:
        self.batches = 0

    @hookimpl
    def on_rollouts_scored(self, batch):
        self.batches += 1

    @hookimpl
    def get_state(self):
        return {"batches": self.batches}

    @hookimpl
    def set_state(self, state):
        self.batches = state["batches"]


def test_plugins_passed_in_code_have_stable_names_and_resume() -> None:
    first, second = Counter(), Counter()
    host = PluginHost(make_plugin_manager(extra=[first, second], load_entry_points=False))
    assert {"Counter", "Counter_2"} <= set(host.plugin_names)
    for _ in range(3):
        host.on_rollouts_scored(scored())
    saved = json.loads(json.dumps(host.get_state()))  # as a checkpoint stores it
    assert saved["Counter"] == saved["Counter_2"] == {"batches": 3}
    # a new process: new objects, same names, so the state finds its plugins again
    resumed = PluginHost(make_plugin_manager(extra=[Counter(), Counter()], load_entry_points=False))
    resumed.set_state(saved)
    assert resumed.plugin("Counter").batches == resumed.plugin("Counter_2").batches == 3
    blocked = PluginHost(make_plugin_manager(extra=[Counter()], block=["Counter"], load_entry_points=False))
    assert "Counter" not in blocked.plugin_names


def test_fail_fast_plugins_raise() -> None:
    class Validator(Exploding):
        fail_fast = True

    host = PluginHost(make_plugin_manager(extra=[Validator()], load_entry_points=False))
    with pytest.raises(RuntimeError, match="boom"):
        host.on_rollouts_scored(scored())


def test_core_imports_without_frameworks(tmp_path) -> None:
    """The core must import with trl, transformers, torch, lightning, peft, vllm and unsloth absent."""
    import subprocess

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = {"torch", "trl", "transformers", "lightning", "pytorch_lightning", "peft", "vllm",
                   "unsloth", "accelerate", "datasets", "numpy"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked for the test: {name}")
        sys.meta_path.insert(0, Block())
    """)
    )
    code = (
        "import lora_rl_plugins as L, lora_rl_plugins.integrations, lora_rl_plugins.cli;"
        "from lora_rl_plugins.bandwidth import information, accounting;"
        "from lora_rl_plugins.lora import capacity, adapters;"
        "from lora_rl_plugins import kl, serving, planning, bridge, report;"
        "h = L.PluginHost(L.make_plugin_manager());"
        "h.on_rollouts_scored(L.RolloutsScored(1, [[1.0], [0.0]], ['f'], [1.0], 2));"
        "h.on_step_end(L.StepEnded(1)); print(h.collect_metrics()['bandwidth/bits_step'])"
    )
    import os

    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"


# -- the typed host: pluggy's call loop, isolation of a plugin's whole contribution ---------------


def test_wrapper_on_a_merged_hook_is_refused_at_registration() -> None:
    from lora_rl_plugins import PluginRegistrationError

    class WrapsMetrics:
        @hookimpl(wrapper=True)
        def collect_metrics(self):
            result = yield
            return result

    with pytest.raises(PluginRegistrationError, match=r"WrapsMetrics\.collect_metrics is a hook wrapper"):
        make_plugin_manager(extra=[WrapsMetrics()], load_entry_points=False)


def test_wrapper_on_a_notification_hook_runs_and_is_isolated(caplog) -> None:
    class Watches:
        def __init__(self) -> None:
            self.seen = 0

        @hookimpl(wrapper=True)
        def on_rollouts_scored(self, batch):
            result = yield
            self.seen += 1
            if self.seen == 2:
                raise RuntimeError("teardown failed")
            return result

    watcher = Watches()
    host = PluginHost(make_plugin_manager(extra=[watcher], load_entry_points=False))
    with caplog.at_level(logging.ERROR, logger="lora_rl_plugins"):
        for step in (1, 2, 3):
            host.on_rollouts_scored(scored())
            host.on_step_end(StepEnded(step))
    assert watcher.seen == 2  # disabled after its fault, once
    assert "Watches" in host.disabled and caplog.text.count("'Watches' raised") == 1
    assert host.plugin("bandwidth").steps == 3  # the built-in saw every batch


@pytest.mark.parametrize("bad", [["not", "a", "mapping"], {"x/y": "seven"}, 3.0])
def test_collect_metrics_that_cannot_be_merged_disables_only_that_plugin(bad, caplog) -> None:
    class BadMetrics:
        @hookimpl
        def collect_metrics(self):
            return bad

    host = PluginHost(make_plugin_manager(extra=[BadMetrics()], load_entry_points=False))
    host.on_rollouts_scored(scored())
    host.on_step_end(StepEnded(1))
    with caplog.at_level(logging.ERROR, logger="lora_rl_plugins"):
        metrics = host.collect_metrics()
        again = host.collect_metrics()
    assert "bandwidth/bits_step" in metrics and "bandwidth/bits_total" in again
    assert "BadMetrics" in host.disabled and caplog.text.count("'BadMetrics' raised in collect_metrics") == 1


def test_builtin_faults_raise() -> None:
    host = PluginHost(make_plugin_manager(load_entry_points=False))
    with pytest.raises(Exception, match="do not split into groups"):
        host.on_rollouts_scored(RolloutsScored(1, [[1.0]] * 3, ["r"], [1.0], 2))


def test_options_come_from_the_plugins_configs() -> None:
    from lora_rl_plugins import KLMonitorConfig, PluginOptions
    from lora_rl_plugins.bridge.options import option_documentation

    for bad in ({"kl_every": 0}, {"kl_max_sequences": 0}, {"reward_levels": 0}, {"on_budget": "explode"}):
        with pytest.raises(ValueError) as from_options:
            PluginOptions(**bad)
        if next(iter(bad)).startswith(("kl_", "on_")):
            with pytest.raises(ValueError) as from_config:
                KLMonitorConfig(**bad)
            assert str(from_options.value) == str(from_config.value)
    with pytest.raises(TypeError, match="Did you mean 'kl_every'"):
        PluginOptions(kl_evry=3)
    names = [doc.name for doc in option_documentation()]
    assert len(names) == len(set(names)) and {"kl_penalty_beta", "kl_reference", "vllm_serving"} <= set(names)
    assert all(doc.doc for doc in option_documentation())


def test_trl_callback_docstring_lists_every_option() -> None:
    pytest.importorskip("trl")
    from lora_rl_plugins.bridge.options import option_documentation
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    for doc in option_documentation():
        assert f"        {doc.name} (default {doc.default}): " in LoraRLCallback.__doc__
