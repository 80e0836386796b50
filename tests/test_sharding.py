"""The engine-aware pieces in one process (the engines themselves run in tests/test_engines.py): the
functional output layer equals the module it replaces, with and without LoRA on it and with adapters
disabled; true LoRA sizes equal PEFT's; an empty batch still measures (a zero-weight dummy row)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402

from lora_rl_plugins.demo.model import build_tiny_model  # noqa: E402
from lora_rl_plugins.kl.engine import full_output_layer, nonempty_batch  # noqa: E402
from lora_rl_plugins.kl.measure import measure_kl  # noqa: E402
from lora_rl_plugins.lora.adapters import summarize_adapter  # noqa: E402
from lora_rl_plugins.lora.sharding import detect_engine, gathered_lora_layers, is_sharded, lora_numels  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj", "lm_head"]


def lora_model():
    model = get_peft_model(build_tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    with torch.no_grad():  # a non-zero update everywhere (PEFT starts B at 0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return model.eval()


def test_functional_output_layer_equals_the_module() -> None:
    model = lora_model()
    head = model.get_base_model().get_output_embeddings()
    h = torch.randn(3, 5, 64)
    with torch.no_grad(), full_output_layer(model) as (make, vocab):
        assert vocab == 41
        policy = make()
        with model.disable_adapter():
            reference = make()
            base = head(h)
        torch.testing.assert_close(policy(h), head(h), rtol=0, atol=1e-6)
        torch.testing.assert_close(reference(h), base, rtol=0, atol=1e-6)
        assert (policy(h) - reference(h)).abs().max() > 1e-3  # the LoRA term is really there


def test_true_sizes_and_no_gather_for_full_parameters() -> None:
    model = lora_model()
    assert detect_engine(model) == "plain" and not is_sharded(model)
    assert gathered_lora_layers(model) is None  # full parameters: nothing to gather
    numels = lora_numels(model)
    peft_count = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(a + b for a, b in numels.values()) == peft_count
    assert summarize_adapter(model).trainable_params == peft_count


def test_a_process_with_no_sequences_measures_a_zero_weight_row() -> None:
    model = lora_model()
    empty_ids = torch.zeros((0, 6), dtype=torch.long)
    ids, _mask, completion = nonempty_batch(empty_ids, torch.zeros_like(empty_ids), torch.zeros((0, 3)))
    assert ids.shape == (1, 2) and completion.sum() == 0
    sums = measure_kl(model, empty_ids, torch.zeros_like(empty_ids), torch.zeros((0, 3), dtype=torch.long))
    assert sums.tokens == 0 and sums.kl == 0 and sums.sequences == 0
