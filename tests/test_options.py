"""Option validation when the callback is built: each wrong type, value or combination names the option,
what it expects and the value given (issue 25 item 3, issue 23 item 2); numeric strings are refused with
the number to pass, never coerced."""

from __future__ import annotations

import re

import pytest

from lora_rl_plugins.bridge.options import PluginOptions

#: (options, exception, the exact message or a regex over it)
REFUSALS = [
    (
        {"kl_budget": "0.1"},
        TypeError,
        "option kl_budget expects a number (float) or None, got '0.1' (str): pass kl_budget=0.1, not the string "
        "(a value read from YAML or the environment arrives as a string: convert it with int(...) or float(...)); "
        "strings are refused, not coerced",
    ),
    (
        {"kl_every": "10"},
        TypeError,
        "option kl_every expects an integer (int), got '10' (str): pass kl_every=10, not the string (a value read "
        "from YAML or the environment arrives as a string: convert it with int(...) or float(...)); strings are "
        "refused, not coerced",
    ),
    ({"kl_every": True}, TypeError, "option kl_every expects an integer (int), got True (bool)"),
    ({"kl_every": 2.5}, TypeError, "option kl_every expects an integer (int), got 2.5 (float)"),
    ({"kl_free": "yes"}, TypeError, "option kl_free expects True or False, got 'yes' (str)"),
    (
        {"on_budget": "halt", "kl_budget": 1.0},
        ValueError,
        "on_budget must be 'warn', 'stop' or 'penalize', got 'halt'",
    ),
    ({"on_budget": 3}, TypeError, "option on_budget expects one of 'warn', 'stop', 'penalize', got 3 (int)"),
    ({"kl_budget": -1.0}, ValueError, "kl_budget must be a positive number of nats per token, got -1.0"),
    ({"kl_every": 0}, ValueError, "kl_every must be >= 1 (generation batches between measurements), got 0"),
    ({"reward_levels": "2"}, TypeError, re.compile(r"^option reward_levels expects an integer \(int\) or None")),
    ({"reward_range": 1.0}, TypeError, "option reward_range expects a pair (float, float) or None, got 1.0 (float)"),
    ({"block": "kl_monitor"}, TypeError, "option block expects a list of str (not one string), got 'kl_monitor' (str)"),
    ({"signal_threshold": "0.05"}, TypeError, re.compile(r"^option signal_threshold expects a number \(float\)")),
    (
        {"vllm_serving": {"max_lora_rank": "16"}},
        TypeError,
        re.compile(r"^option vllm_serving\.max_lora_rank expects an integer \(int\), got '16' \(str\): pass "),
    ),
    ({"kl_evry": 1}, TypeError, re.compile(r"^unknown lora_rl_plugins option 'kl_evry'\. Did you mean 'kl_every'\?")),
]


@pytest.mark.parametrize(("options", "error", "message"), REFUSALS, ids=[repr(r[0]) for r in REFUSALS])
def test_each_refusal_names_the_option_and_the_value(options, error, message) -> None:
    with pytest.raises(error) as caught:
        PluginOptions(**options)
    text = str(caught.value)
    if isinstance(message, str):
        assert text == message
    else:
        assert message.search(text), text
    assert next(iter(options)) in text  # the option given is named


def test_valid_values_of_every_type_are_accepted() -> None:
    import numpy as np

    options = PluginOptions(
        kl_budget=1,  # an int is a number
        kl_every=np.int64(5),  # numpy integers are integers
        reward_range=[0, 1],  # a list from YAML is a pair
        reward_levels=2,
        kl_module_norms="auto",
        block=["kl_monitor"],
        vllm_serving={"max_lora_rank": 16},
        reference_answer={"q": "a"},
        answer_extractor=str.strip,
    )
    assert options.kl_monitor.kl_budget == 1 and options.kl_monitor.kl_every == 5


def test_kl_options_name_themselves_as_asking_for_the_monitor() -> None:
    assert PluginOptions().kl_requested_by == []
    assert PluginOptions(kl_budget=None, kl_free=False).kl_requested_by == []
    assert PluginOptions(kl_every=1, kl_reference="base").kl_requested_by == ["kl_every=1", "kl_reference='base'"]


def test_kl_option_on_a_model_without_lora_is_refused_when_built(tmp_path) -> None:
    from helpers import RecordingReward, grpo_trainer

    from lora_rl_plugins import NotALoraModelError
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    reward = RecordingReward(lambda prompts, completions: [0.0] * len(completions))
    trainer = grpo_trainer(reward, tmp_path, steps=1, peft=False)
    for options, named in (({"kl_every": 1}, "kl_every=1"), ({"kl_max_sequences": 4}, "kl_max_sequences=4")):
        with pytest.raises(NotALoraModelError) as caught:
            LoraRLCallback(trainer, load_entry_points=False, **options)
        assert str(caught.value).startswith(f"{named} asks for the KL monitor"), caught.value
        assert f"or remove {named.split('=')[0]} from the callback's options" in str(caught.value)
    with pytest.raises(TypeError, match="option kl_budget expects a number"):
        LoraRLCallback(trainer, kl_budget="0.1", load_entry_points=False)
    assert reward.calls == []


def test_check_model_on_real_models() -> None:
    """``PluginOptions.check_model`` on the tiny model without LoRA and with a real PEFT adapter."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins import NotALoraModelError, VLLMLoRAError
    from lora_rl_plugins.demo.model import build_tiny_model

    plain = build_tiny_model()
    PluginOptions().check_model(plain)  # nothing asked for the monitor: a warning later, not an error
    with pytest.raises(NotALoraModelError, match=r"^kl_reference='base' asks for the KL monitor"):
        PluginOptions(kl_reference="base").check_model(plain)
    PluginOptions(kl_every=1, block=["kl_monitor"]).check_model(plain)  # the monitor is blocked: nothing to refuse
    lora = get_peft_model(build_tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    PluginOptions(kl_every=1, vllm_serving={"max_lora_rank": 8}).check_model(lora)
    with pytest.raises(VLLMLoRAError, match=r"LoRA rank 4 \(r\) is greater than max_lora_rank 1"):
        PluginOptions(vllm_serving={"max_lora_rank": 1}).check_model(lora)
    PluginOptions(vllm_serving={"max_lora_rank": 1}, block=["vllm_serving"]).check_model(lora)
