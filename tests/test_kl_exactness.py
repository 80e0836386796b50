"""The KL measurement against the model's own logits: architectures, float64 precision, where the bound applies.

Every expected value is computed here from the model's own ``forward(...).logits`` (policy vs adapters
disabled) in float64 with ``torch.nn.functional.kl_div``, independently of ``measure_kl``.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from lora_rl_plugins.demo.model import build_tiny_model  # noqa: E402
from lora_rl_plugins.kl.bounds import single_layer_kl_bound, update_norms  # noqa: E402
from lora_rl_plugins.kl.measure import LogitsSource, measure_kl, token_log_probs  # noqa: E402
from lora_rl_plugins.kl.monitor import KLMonitorConfig, KLMonitorPlugin  # noqa: E402
from lora_rl_plugins.lora.adapters import lora_layers, summarize_adapter  # noqa: E402
from lora_rl_plugins.plugin.events import AdapterReady, PolicySample, RunStarted  # noqa: E402

COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)

# family: (config class, model class, settings, the path the check must choose, softcap)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, "head", None),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "head", None),
    # tanh softcap after the head: verified, still the head path
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8, final_logit_softcapping=0.5), "head", 0.5),
    # logits * logit_scale after the head
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(logit_scale=0.25), "forward", None),
    # logits / logits_scaling after the head (the 64x case at logits_scaling = 8)
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(logits_scaling=8.0), "forward", None),
    # hidden / (hidden_size / dim_model_base) before the head
    "minicpm3": (
        "MiniCPM3Config",
        "MiniCPM3ForCausalLM",
        dict(
            num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=8
        ),
        "forward",
        None,
    ),
    # logits * lm_head_multiplier (muP) after the head
    "falcon_h1": (
        "FalconH1Config",
        "FalconH1ForCausalLM",
        dict(
            lm_head_multiplier=3.0,
            mamba_d_ssm=32,
            mamba_n_heads=4,
            mamba_d_head=8,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=8,
        ),
        "forward",
        None,
    ),
}


def family_model(family, targets=None, seed=0):
    config_name, model_name, settings, _, _ = FAMILIES[family]
    if not hasattr(transformers, model_name):
        pytest.skip(f"transformers has no {model_name}")
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**{**COMMON, **settings}))
    targets = targets or (["q_proj", "v_proj"] if family not in ("minicpm3", "falcon_h1") else ["o_proj", "down_proj"])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    return peft.get_peft_model(model, config)


def batch(rows=3, length=10, completion=4, vocab=64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=generator)
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # left padding
    mask = torch.ones(rows, completion)
    mask[1, -1] = 0
    return ids, attention, mask


def own_kl(model, ids, attention, mask, temperature=1.0):
    """Per-token KL(π_θ‖π_ref), reverse KL and k3 from the model's own forward().logits, float64."""
    c = mask.shape[1]
    with torch.no_grad():
        was = model.training
        model.eval()
        policy = model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1].double() / temperature
        with model.disable_adapter():
            ref = model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1].double() / temperature
        model.train(was)
    logp, logr = torch.log_softmax(policy, -1), torch.log_softmax(ref, -1)
    kl = torch.nn.functional.kl_div(logr, logp, log_target=True, reduction="none").sum(-1)
    reverse = torch.nn.functional.kl_div(logp, logr, log_target=True, reduction="none").sum(-1)
    target = ids[:, -c:].unsqueeze(-1)
    ratio = (logr.gather(-1, target) - logp.gather(-1, target)).squeeze(-1)
    k3 = ratio.exp() - ratio - 1
    n = mask.sum()
    return {
        "kl": float((kl * mask).sum() / n),
        "reverse": float((reverse * mask).sum() / n),
        "k3": float((k3 * mask).sum() / n),
        "max": float((kl * mask).max()),
        "seq": float((kl * mask).sum(-1).mean()),
    }


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("chunk", [1, 2**23])
def test_kl_equals_the_models_own_logits(family, chunk) -> None:
    model = family_model(family)
    ids, attention, mask = batch()
    source = LogitsSource()
    sums = measure_kl(model, ids, attention, mask, temperature=0.7, max_chunk_elements=chunk, logits_source=source)
    expected = own_kl(model, ids, attention, mask, temperature=0.7)
    assert (source.mode, source.softcap) == FAMILIES[family][3:]
    # float32 models: a chunk of one position of one sequence runs other batch shapes than the full forward,
    # so the logits agree to float32 rounding (~1e-7), not bit for bit
    rel = 1e-5
    assert sums.kl / sums.tokens == pytest.approx(expected["kl"], rel=rel)
    assert sums.reverse_kl / sums.tokens == pytest.approx(expected["reverse"], rel=rel)
    assert sums.k3 / sums.tokens == pytest.approx(expected["k3"], rel=rel, abs=1e-12)
    assert sums.kl_max == pytest.approx(expected["max"], rel=rel)
    assert sums.sequence_kl / sums.sequences == pytest.approx(expected["seq"], rel=rel)
    assert sums.certificate >= sums.kl
    assert model.training  # restored


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("chunk", [1, 2**23])
def test_token_log_probs_equal_the_models_own_logits(family, chunk) -> None:
    """The learning room's log-probabilities ride the same checked logits source: head and forward paths."""
    model = family_model(family)
    ids, attention, mask = batch()
    source = LogitsSource()
    policy, reference = token_log_probs(
        model, ids, attention, mask, temperature=0.7, max_chunk_elements=chunk, logits_source=source
    )
    assert (source.mode, source.softcap) == FAMILIES[family][3:]
    assert policy.dtype == reference.dtype == torch.float64 and policy.shape == (ids.shape[0],)
    c = mask.shape[1]
    with torch.no_grad():
        model.eval()
        expected = []
        for disabled in (False, True):
            with model.disable_adapter() if disabled else torch.no_grad():
                logits = model(input_ids=ids, attention_mask=attention).logits
            logp = torch.log_softmax(logits[:, -c - 1 : -1].double() / 0.7, dim=-1)
            expected.append((logp.gather(-1, ids[:, -c:].unsqueeze(-1)).squeeze(-1) * mask).sum(-1))
        model.train()
    assert policy.tolist() == pytest.approx(expected[0].tolist(), rel=1e-5)
    assert reference.tolist() == pytest.approx(expected[1].tolist(), rel=1e-5)
    assert model.training  # restored
    empty_policy, empty_reference = token_log_probs(model, ids[:0], attention[:0], mask[:0], logits_source=source)
    assert empty_policy.shape == empty_reference.shape == (0,)  # a process with no probes still joins


@pytest.mark.parametrize("family", ["cohere", "granite", "falcon_h1"])
def test_the_check_is_what_catches_a_transform(family) -> None:
    """Forcing the head path on these families gives a wrong KL: the check, not luck, keeps it right."""
    model = family_model(family)
    ids, attention, mask = batch()
    forced = LogitsSource()
    forced.mode = "head"
    wrong = measure_kl(model, ids, attention, mask, logits_source=forced)
    right = own_kl(model, ids, attention, mask)["kl"]
    assert abs(wrong.kl / wrong.tokens - right) > 0.1 * right


def scaled_lora(model, factor):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(factor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_precision_down_to_1e_minus_9_nats(dtype) -> None:
    """Within 1e-3 relative of float64 from the model's own logits at KL >= 1e-6, 1e-2 down to 1e-8, never < 0.

    Before (float32 log-softmax): 8.5e-4 relative at 1.7e-5, 5.6e-2 at 1.7e-7, −5.9e-9 at 1.7e-9.
    """
    ids, attention, mask = batch(length=12, completion=6)
    seen = []
    for factor in (1.0, 0.1, 1e-2, 1e-3, 1e-4, 0.0):
        model = peft.get_peft_model(
            build_tiny_model(seed=3, vocab_size=64).to(dtype),
            peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        scaled_lora(model, 0.05 * factor)
        sums = measure_kl(model, ids, attention, mask)
        measured, expected = sums.kl / sums.tokens, own_kl(model, ids, attention, mask)
        assert measured >= 0 and sums.reverse_kl >= 0 and sums.k3 >= 0 and sums.kl_max >= 0
        seen.append(expected["kl"])
        if factor == 0.0:
            assert measured == 0.0
        elif expected["kl"] >= 1e-6:
            assert measured == pytest.approx(expected["kl"], rel=1e-3)
            assert sums.reverse_kl / sums.tokens == pytest.approx(expected["reverse"], rel=1e-3)
        elif expected["kl"] >= 1e-8:
            assert measured == pytest.approx(expected["kl"], rel=1e-2)
    assert min(k for k in seen if k > 0) < 1e-9 < 1e-5 < max(seen)  # the range the targets speak about


def sample_of(model, ids, attention, mask):
    """The ``PolicySample`` of [B, L] sequences whose last ``mask.shape[1]`` positions are the completion."""
    c = mask.shape[1]
    return PolicySample(
        step=0,
        model=model,
        prompt_ids=ids[:, :-c],
        prompt_mask=attention[:, :-c],
        completion_ids=ids[:, -c:],
        completion_mask=mask,
        completion_attention=attention[:, -c:],
    )


def monitor_measure(model, options=None):
    monitor = KLMonitorPlugin(KLMonitorConfig(kl_module_norms=False))
    monitor.on_run_start(RunStarted(framework="test", options=options or {}))
    monitor.on_adapter_ready(AdapterReady(summarize_adapter(model), model))
    ids, attention, mask = batch(length=12, completion=6)
    monitor.measure(sample_of(model, ids, attention, mask))
    return monitor.values


def test_bound_only_when_the_output_layer_is_the_only_adapted_module() -> None:
    def tiny(targets):
        torch.manual_seed(0)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        return peft.get_peft_model(build_tiny_model(vocab_size=64), config)

    only_head = monitor_measure(tiny(["lm_head"]))
    assert only_head["bound"] >= only_head["kl_max"] > 0  # a bound where it is one
    # with inner modules adapted the features move and the formula bounds nothing: a small head update
    # and large inner updates put it far below the measured KL, so it must not be reported
    both = tiny(["lm_head", "q_proj", "v_proj", "down_proj"])
    with torch.no_grad():
        both.base_model.model.lm_head.lora_B["default"].weight.mul_(1e-3)
    values = monitor_measure(both)
    assert "bound" not in values
    head = next(layer for layer in lora_layers(both) if layer.name.endswith("lm_head"))
    ids, attention, mask = batch(length=12, completion=6)
    features = measure_kl(both, ids, attention, mask).feature_norm_max
    formula = single_layer_kl_bound(update_norms(head.weight_b, head.weight_a, head.scaling).spectral, features)
    assert formula < values["kl_max"] / 10
    # a head whose output the model transforms further (Granite divides by logits_scaling): no bound either
    assert "bound" not in monitor_measure(family_model("granite", targets=["lm_head"]))
    # softcap is 1-Lipschitz: the bound still holds on Gemma-2
    gemma = monitor_measure(family_model("gemma2", targets=["lm_head"]))
    assert gemma["bound"] >= gemma["kl_max"] > 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"top_k": 3}, "top_k=3"),
        ({"top_p": 0.9}, "top_p=0.9"),
        ({"min_p": 0.05}, "min_p=0.05"),
        ({"generation_kwargs": {"top_k": 5}}, "top_k=5"),
        ({"beta": 0.04, "bf16": True}, None),  # TRL's default autocast only rounds: an info (precision_note)
        ({"top_k": 0, "top_p": 1.0, "min_p": None, "repetition_penalty": 1.0, "beta": 0.04, "bf16": False}, None),
        ({"beta": 0.0, "bf16": True}, None),  # the trainer logs no k3 at beta = 0
    ],
)
def test_comparability_warning_decided_by_the_monitor(options, expected) -> None:
    model = peft.get_peft_model(build_tiny_model(vocab_size=64), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor_measure(model, options)
    messages = [str(w.message) for w in caught if w.category.__name__ == "KLComparabilityWarning"]
    if expected is None:
        assert messages == []
    else:
        assert len(messages) == 1 and expected in messages[0]


def test_autocast_is_an_info_not_a_warning() -> None:
    from lora_rl_plugins.kl.monitor import precision_note

    assert "bf16 autocast" in precision_note({"beta": 0.04, "bf16": True})
    assert "fp16 autocast" in precision_note({"beta": 0.04, "fp16": True})
    assert precision_note({"beta": 0.0, "bf16": True}) is None  # no k3 logged at beta = 0
    assert precision_note({"beta": 0.04, "bf16": False, "fp16": False}) is None


def test_measured_rows_are_evenly_spaced() -> None:
    from lora_rl_plugins.kl.monitor import measured_rows

    assert measured_rows(8, 8) == slice(None) and measured_rows(3, 8) == slice(None)
    assert measured_rows(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]  # groups of 4: two rollouts of each prompt
    assert measured_rows(10, 4) == [0, 2, 5, 7]
    with pytest.raises(ValueError, match="kl_max_sequences"):
        measured_rows(4, 0)


def test_the_monitor_measures_the_rows_it_names() -> None:
    """Over kl_max_sequences, kl_mean is the exact KL on the evenly spaced rows (float64 recomputation), not on
    the batch's first rows."""
    from lora_rl_plugins.kl.monitor import measured_rows

    torch.manual_seed(0)
    model = peft.get_peft_model(
        build_tiny_model(vocab_size=64),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    ids, attention, mask = batch(rows=12, length=12, completion=6)
    mask[5] = 0  # a row the first-rows rule would measure differently
    monitor = KLMonitorPlugin(KLMonitorConfig(kl_module_norms=False, kl_max_sequences=4))
    monitor.on_run_start(RunStarted(framework="test", options={}))
    monitor.on_adapter_ready(AdapterReady(summarize_adapter(model), model))
    monitor.measure(sample_of(model, ids, attention, mask))
    rows = measured_rows(12, 4)
    expected = own_kl(model, ids[rows], attention[rows], mask[rows])
    first = own_kl(model, ids[:4], attention[:4], mask[:4])
    assert monitor.values["kl_mean"] == pytest.approx(expected["kl"], rel=1e-6)
    assert monitor.values["kl_mean"] != pytest.approx(first["kl"], rel=1e-6)


def test_policy_sample_concatenates_prompt_and_completion_at_first_use() -> None:
    from lora_rl_plugins.bridge.translate import policy_sample
    from lora_rl_plugins.plugin.collective import SingleProcess

    ids, attention, mask = batch(length=10, completion=4)
    tool = torch.ones_like(mask)  # a completion attended to where it is not trained (a tool's result)
    parts = {"prompt_ids": ids[:, :6], "prompt_mask": attention[:, :6], "completion_ids": ids[:, 6:]}
    common = {"step": 1, "model": None, "completion_mask": mask, "temperature": 1.0, "collective": SingleProcess()}
    sample = policy_sample(**parts, **common, completion_attention=tool)
    assert "input_ids" not in vars(sample)  # nothing copied until a plugin reads it
    assert torch.equal(sample.input_ids, ids) and sample.input_ids is sample.input_ids
    assert torch.equal(sample.attention_mask, torch.cat([attention[:, :6], tool], dim=1))
    plain = policy_sample(**parts, **common)
    assert torch.equal(plain.attention_mask, torch.cat([attention[:, :6], mask], dim=1))
