"""The plugin manager: entry-point loading, blocking, third-party plugins, fault isolation."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from lora_rl_plugins import PluginHost, RolloutsScored, RunStarted, StepEnded, hookimpl, make_plugin_manager
from lora_rl_plugins.builtin import BandwidthPlugin


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
    host.call("on_rollouts_scored", batch=scored(6))
    host.call("on_step_end", step=StepEnded(1))
    metrics = host.metrics()
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
    host.call("on_run_start", run=RunStarted("test", 2))
    reference = PluginHost(make_plugin_manager(load_entry_points=False))
    with caplog.at_level(logging.ERROR, logger="lora_rl_plugins"):
        for h in (host, reference):
            for step in (1, 2, 3):
                h.call("on_rollouts_scored", batch=scored())
                h.call("on_step_end", step=StepEnded(step))
    assert exploding.calls == 1
    assert caplog.text.count("raised in on_rollouts_scored") == 1
    assert "RuntimeError: boom" in caplog.text
    assert list(host.disabled) == ["Exploding"]  # the plugin's class names it in the report
    assert "'Exploding' raised in on_rollouts_scored" in caplog.text
    assert "boom" in host.disabled["Exploding"]
    bandwidth = {k: v for k, v in host.metrics().items() if k.startswith("bandwidth/")}
    expected = {k: v for k, v in reference.metrics().items() if k.startswith("bandwidth/")}
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
        host.call("on_rollouts_scored", batch=scored())
    saved = json.loads(json.dumps(host.state_dict()))  # as a checkpoint stores it
    assert saved["Counter"] == saved["Counter_2"] == {"batches": 3}
    # a new process: new objects, same names, so the state finds its plugins again
    resumed = PluginHost(make_plugin_manager(extra=[Counter(), Counter()], load_entry_points=False))
    resumed.load_state_dict(saved)
    assert resumed.plugin("Counter").batches == resumed.plugin("Counter_2").batches == 3
    blocked = PluginHost(make_plugin_manager(extra=[Counter()], block=["Counter"], load_entry_points=False))
    assert "Counter" not in blocked.plugin_names


def test_fail_fast_plugins_raise() -> None:
    class Validator(Exploding):
        fail_fast = True

    host = PluginHost(make_plugin_manager(extra=[Validator()], load_entry_points=False))
    with pytest.raises(RuntimeError, match="boom"):
        host.call("on_rollouts_scored", batch=scored())


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
        "from lora_rl_plugins import information, capacity, accounting, adapters;"
        "h = L.PluginHost(L.make_plugin_manager());"
        "h.call('on_rollouts_scored', batch=L.RolloutsScored(1, [[1.0], [0.0]], ['f'], [1.0], 2));"
        "h.call('on_step_end', step=L.StepEnded(1)); print(h.metrics()['bandwidth/bits_step'])"
    )
    import os

    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"
