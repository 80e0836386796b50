"""The reference policy "adapters disabled" (``kl.reference._adapters_disabled``) computes exactly what PEFT's
own ``disable_adapter()`` computes, for every kind of module PEFT toggles, and leaves the model as it found it:
each layer's flag, every parameter's ``requires_grad`` (a frozen adapter parameter stays frozen) and the train
mode. Real PEFT on the demo's tiny Qwen2 model."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from lora_rl_plugins.demo.model import build_tiny_model  # noqa: E402
from lora_rl_plugins.kl.reference import ReferencePolicy  # noqa: E402

CONFIGS = {
    "all-linear": {"target_modules": "all-linear"},
    "rank_pattern": {"target_modules": ["q_proj", "v_proj", "down_proj"], "rank_pattern": {"down_proj": 2}},
    "modules_to_save": {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
    "trainable_tokens": {"target_modules": ["q_proj"], "trainable_token_indices": [1, 3]},
    "lm_head": {"target_modules": ["q_proj", "lm_head"]},
    "dora": {"target_modules": ["q_proj", "v_proj"], "use_dora": True},
    "bias": {"target_modules": ["q_proj", "v_proj"], "lora_bias": True},
}


def _model(name: str):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **CONFIGS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(build_tiny_model(), config)
    for _, param in model.named_parameters():  # move every trained weight away from its initial value
        if param.requires_grad:
            param.data.add_(0.1 * torch.randn_like(param))
    return model


def _state(model) -> tuple[list[bool], dict[str, bool], bool]:
    flags = [m._disable_adapters for m in model.modules() if hasattr(m, "_disable_adapters")]
    return flags, {n: p.requires_grad for n, p in model.named_parameters()}, model.training


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_logits_equal_peft_disable_adapter(name: str) -> None:
    model = _model(name)
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    # a parameter the user froze stays frozen (PEFT's enable path would set it trainable again)
    frozen = next(n for n, p in model.named_parameters() if "lora_A" in n)
    model.get_parameter(frozen).requires_grad_(False)
    before = _state(model)
    with torch.no_grad():
        policy = model(input_ids=ids).logits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT warns that disabling a biased adapter is not the base model
            with model.disable_adapter():
                expected = model(input_ids=ids).logits
        model.get_parameter(frozen).requires_grad_(False)  # PEFT's own exit set it trainable again
        before = _state(model)
        with ReferencePolicy("disable").activate(model):
            got = model(input_ids=ids).logits
        after_policy = model(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert torch.equal(after_policy, policy)
    assert not torch.equal(got, policy)  # the adapter does change the output: the comparison means something
    if name != "bias":  # the fast path: nothing else touched
        assert _state(model) == before


def test_adapters_already_disabled_stay_disabled() -> None:
    model = _model("all-linear")
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids).logits
        with ReferencePolicy("disable").activate(model):
            inner = model(input_ids=ids).logits
        still = model(input_ids=ids).logits
    assert torch.equal(inner, base) and torch.equal(still, base)


@pytest.mark.parametrize("name", ["all-linear", "modules_to_save", "dora"])
def test_eval_mode_sets_the_flags_model_eval_and_model_train_set(name) -> None:
    """``kl.engine.eval_mode`` sets the ``training`` flags directly (not through ``Module.train``): within the
    block every module is as after ``model.eval()``, after it as after ``model.train()`` (or left in eval mode
    when the model was); and a module whose class adds to ``train`` makes it call ``Module.train`` itself."""
    from lora_rl_plugins.kl.engine import eval_mode

    model = _model(name)
    model.train()
    next(m for m in model.modules() if m is not model).eval()  # a mixed state: model.train() resets it too
    with eval_mode(model):
        assert not any(m.training for m in model.modules())  # model.eval()'s result
    assert all(m.training for m in model.modules())  # model.train()'s result
    model.eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert not any(m.training for m in model.modules())  # a model in eval mode stays so

    calls = []

    class Counted(torch.nn.Identity):
        def train(self, mode: bool = True):
            calls.append(mode)
            return super().train(mode)

    counted = _model(name)
    counted.base_model.model.model.counted = Counted()
    counted.train()
    calls.clear()
    with eval_mode(counted):
        assert not any(m.training for m in counted.modules())
    assert calls == [False, True] and all(m.training for m in counted.modules())
