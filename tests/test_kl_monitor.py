"""The KL monitor and KL-free mode in real TRL GRPO runs on the tiny local model."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from helpers import RecordingReward, grpo_trainer

from lora_rl_plugins.integrations.trl import LoraRLCallback
from lora_rl_plugins.kl.kl_free import KLFreeError
from lora_rl_plugins.kl.monitor import KLBudgetWarning

pytestmark = pytest.mark.slow


def first_char_reward(prompts, completions):
    return [float(c[:1] in "0123") for c in completions]


def logged(trainer, name):
    return [e[name] for e in trainer.state.log_history if name in e and "train_runtime" not in e]


def test_beta_positive_monitor_agrees_with_trl_kl(tmp_path) -> None:
    # bf16=False: GRPOConfig defaults to bf16 autocast, also on CPU, which rounds TRL's log-probs (not ours)
    trainer = grpo_trainer(
        RecordingReward(first_char_reward), tmp_path, steps=6, beta=0.04, learning_rate=5e-2, bf16=False
    )
    trainer.add_callback(LoraRLCallback(trainer, kl_every=1, kl_max_sequences=64, load_entry_points=False))
    trainer.train()
    trl_kl = logged(trainer, "kl")
    k3 = logged(trainer, "kl_monitor/k3_mean")
    exact = logged(trainer, "kl_monitor/kl_mean")
    stderr = logged(trainer, "kl_monitor/k3_stderr")
    assert len(trl_kl) == len(k3) == 6
    assert exact[0] == pytest.approx(0.0, abs=1e-7)  # B = 0 at the start: the policy is the reference
    assert exact[-1] > 1e-4  # training moved the adapter
    # the monitor's k3 on the same tokens and weights is TRL's kl
    assert k3 == pytest.approx(trl_kl, rel=1e-4, abs=1e-7)
    # the exact KL agrees with the k3 estimate within the estimator's noise
    for e, k, s in zip(exact, k3, stderr, strict=True):
        assert abs(e - k) <= 4 * s + 1e-6
    certificate = logged(trainer, "kl_monitor/certificate")
    assert all(c >= e for c, e in zip(certificate, exact, strict=True))


def test_beta_zero_kl_grows_from_zero(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=8, learning_rate=5e-2)
    assert trainer.beta == 0.0
    trainer.add_callback(LoraRLCallback(trainer, kl_every=2, load_entry_points=False))
    trainer.train()
    assert "kl" not in trainer.state.log_history[0]  # TRL logs no KL at beta = 0 (TRL issue #4040)
    measured = logged(trainer, "kl_monitor/kl_mean")
    steps = logged(trainer, "kl_monitor/measured_step")
    assert sorted(set(steps)) == [1, 3, 5, 7]  # every 2nd generation batch
    assert measured[0] == pytest.approx(0.0, abs=1e-7)
    assert measured[-1] > measured[0] + 1e-4
    assert logged(trainer, "kl_monitor/update_spectral_max")[-1] > 0
    # per-module norms are detail metrics: in the run log, not in TRL's console dict (console_detail=False)
    assert not any(name.startswith("kl_monitor/norms/") for name in trainer.state.log_history[-2])
    run_log = (tmp_path / "out" / "lora_rl_metrics.jsonl").read_text()
    assert '"name": "kl_monitor/norms/' in run_log


def test_budget_stop_ends_training_cleanly(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=20, learning_rate=5e-2)
    trainer.add_callback(LoraRLCallback(trainer, kl_every=1, kl_budget=1e-4, on_budget="stop", load_entry_points=False))
    trainer.train()
    assert 1 < trainer.state.global_step < 20
    assert logged(trainer, "kl_monitor/kl_mean")[-1] > 1e-4
    assert logged(trainer, "kl_monitor/budget")[-1] == 1e-4


def test_budget_penalize_turns_on_trl_kl_penalty(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=10, learning_rate=5e-2)
    trainer.add_callback(
        LoraRLCallback(
            trainer, kl_every=1, kl_budget=1e-4, on_budget="penalize", kl_penalty_beta=0.1, load_entry_points=False
        )
    )
    trainer.train()
    assert trainer.beta == 0.1
    history = [e for e in trainer.state.log_history if "train_runtime" not in e]
    switched = next(i for i, e in enumerate(history) if e.get("kl_monitor/penalty_beta", 0) > 0)
    assert "kl" not in history[switched]  # the step that exceeded the budget ran KL-free
    assert all("kl" in e for e in history[switched + 1 :])  # TRL's KL term is on from the next batch
    assert trainer.state.global_step == 10


def test_budget_warn(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=6, learning_rate=5e-2)
    trainer.add_callback(LoraRLCallback(trainer, kl_every=1, kl_budget=1e-4, load_entry_points=False))
    with pytest.warns(KLBudgetWarning, match=r"exceeds kl_budget=0\.0001"):
        trainer.train()


def test_kl_free_mode_has_no_reference_anywhere(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=4, learning_rate=5e-2)
    callback = LoraRLCallback(trainer, kl_free=True, kl_every=1, load_entry_points=False)
    trainer.add_callback(callback)
    reference_passes = []
    original = trainer._get_per_token_logps_and_entropies

    def counting(model, *args, **kwargs):
        reference_passes.append(not model.base_model.model.model.layers[0].self_attn.q_proj._disable_adapters)
        return original(model, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = counting
    trainer.train()
    assert trainer.ref_model is None and "ref" not in trainer.model.peft_config
    assert all(reference_passes)  # the trainer never evaluated the model with adapters disabled
    assert "ref_per_token_logps" not in trainer._buffered_inputs[0]
    assert logged(trainer, "kl_monitor/kl_mean")[-1] > 0  # the guard rail still measures


def test_kl_free_refuses_contradicting_settings(tmp_path) -> None:
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=1, beta=0.04)
    with pytest.raises(KLFreeError, match=r"beta=0\.04 adds a KL penalty"):
        LoraRLCallback(trainer, kl_free=True)
    # TRL refuses sync_ref_model with PEFT itself; with a full model it loads a reference copy from disk
    from lora_rl_plugins.demo.model import build_tiny_model

    build_tiny_model().save_pretrained(tmp_path / "tiny")
    synced = grpo_trainer(
        RecordingReward(first_char_reward),
        tmp_path,
        steps=1,
        sync_ref_model=True,
        beta=0.04,
        peft=False,
        model=str(tmp_path / "tiny"),
    )
    with pytest.raises(KLFreeError, match="sync_ref_model=True") as raised:
        LoraRLCallback(synced, kl_free=True)
    assert "beta=0.04" in str(raised.value)  # every problem at once
    assert "already built a reference model" in str(raised.value)


def test_kl_free_without_lora_is_a_clear_error(tmp_path) -> None:
    from lora_rl_plugins.lora.adapters import NotALoraModelError

    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=1, peft=False)
    with pytest.raises(NotALoraModelError, match=r"kl_free=True asks .* does not make a silent full copy"):
        LoraRLCallback(trainer, kl_free=True, load_entry_points=False)  # when built, naming the option


def test_initial_adapter_reference_for_a_pretrained_adapter(tmp_path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model

    def pretrained():
        torch.manual_seed(3)
        model = get_peft_model(
            build_tiny_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        return model

    runs = {}
    for reference in ("initial_adapter", "base"):
        trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=2, peft=False, model=pretrained())
        trainer.add_callback(LoraRLCallback(trainer, kl_every=1, kl_reference=reference, load_entry_points=False))
        trainer.train()
        runs[reference] = logged(trainer, "kl_monitor/kl_mean")
    assert runs["initial_adapter"][0] == pytest.approx(0.0, abs=1e-7)  # drift from where this run started
    assert runs["base"][0] > 1e-4  # drift from the base model includes the earlier training


@pytest.mark.parametrize(
    ("settings", "lora_dropout", "expected"),
    [
        (dict(top_k=3), 0.0, "top_k=3"),
        (dict(top_p=0.8, min_p=0.05), 0.0, "top_p=0.8, min_p=0.05"),
        (dict(beta=0.04, bf16=False), 0.1, "dropout is active"),
        (dict(beta=0.04, bf16=True), 0.0, None),  # TRL's default bf16 autocast: rounding, an info, no warning
        (dict(beta=0.04, bf16=False), 0.1, None),  # disable_dropout=True below
        (dict(beta=0.04, bf16=False), 0.0, None),
    ],
)
def test_trl_settings_that_make_exact_kl_and_k3_differ_warn_once(tmp_path, settings, lora_dropout, expected) -> None:
    import warnings

    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model
    from lora_rl_plugins.kl.monitor import KLComparabilityWarning

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=lora_dropout, task_type="CAUSAL_LM"
    )
    model = get_peft_model(build_tiny_model(), config)
    if lora_dropout and expected is None:
        settings = dict(settings, disable_dropout=True)
    trainer = grpo_trainer(RecordingReward(first_char_reward), tmp_path, steps=2, peft=False, model=model, **settings)
    trainer.add_callback(LoraRLCallback(trainer, kl_every=1, load_entry_points=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    messages = [str(w.message) for w in caught if issubclass(w.category, KLComparabilityWarning)]
    assert messages == [] if expected is None else (len(messages) == 1 and expected in messages[0])
    assert len(logged(trainer, "kl_monitor/kl_mean")) == 2  # measured all the same
