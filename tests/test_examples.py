"""Each example runs as a user would run it (a few steps here; the Unsloth one up to its GPU boundary)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

pytestmark = pytest.mark.slow


def test_trl_example(tmp_path, capsys) -> None:
    pytest.importorskip("trl")
    import trl_grpo

    trainer = trl_grpo.main(["--steps", "3", "--kl-free", "--output-dir", str(tmp_path)])
    assert trainer.state.global_step == 3
    assert "bandwidth/bits_total" in capsys.readouterr().out


def test_trl_example_at_defaults_raises_no_checkpointing_deprecation(tmp_path, capsys) -> None:
    """At its defaults the example does not switch on TRL's default gradient checkpointing under the name
    transformers 5 deprecates (a FutureWarning for the argument, then one per step from TRL's enable/disable)."""
    pytest.importorskip("trl")
    import warnings

    import trl_grpo

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = trl_grpo.main(["--steps", "2", "--output-dir", str(tmp_path)])
    assert trainer.args.activation_checkpointing is False
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    # PEFT 0.21's get_peft_model reads model.is_gradient_checkpointing itself (peft_model.py), whatever the
    # settings: that one is PEFT's, not the example's
    ours = [m for m in messages if "checkpointing" in m and not m.startswith("`is_gradient_checkpointing`")]
    assert not ours, ours


def test_unsloth_example_up_to_the_gpu_boundary(capsys) -> None:
    pytest.importorskip("peft")
    import unsloth_grpo

    assert unsloth_grpo.main(["--max-lora-rank", "10", "--episodes", "50000"]) == 0
    out = capsys.readouterr().out
    assert "Unsloth starts vLLM with max_lora_rank=16" in out
    assert "vLLM check: the adapter fits the engine" in out
    assert "stopping at that boundary" in out


def test_kl_free_config_sets_beta_and_refuses_sync(tmp_path) -> None:
    pytest.importorskip("trl")
    from trl import GRPOConfig

    from lora_rl_plugins.integrations.unsloth import kl_free_config
    from lora_rl_plugins.kl.kl_free import KLFreeError

    config = kl_free_config(GRPOConfig(output_dir=str(tmp_path), beta=0.001, use_cpu=True, report_to=[]))
    assert config.beta == 0.0
    with pytest.raises(KLFreeError, match="sync_ref_model"):
        kl_free_config(GRPOConfig(output_dir=str(tmp_path), sync_ref_model=True, use_cpu=True, report_to=[]))
