"""The probe plugin: information absorbed on a fixed probe set (``learning/absorbed_bits``, docs/theory.md §8),
measured against the same reference policy as the KL monitor (``kl.reference.choose_reference`` with the
run's ``kl_reference``).

The chain a run obeys, in bits: structural bound (``bandwidth/bound_*``) ≥ signal
(``bandwidth/bits_*``, a rate: it recounts a lesson at every step) ≥ information absorbed
(``learning/absorbed_bits``) ≤ what there was to learn (``learning/answer_bits``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..kl.measure import LogitsSource
from ..kl.reference import ReferencePolicy, choose_reference
from ..plugin.base import SavedState, Stateful, float_values
from ..plugin.events import AdapterReady, RunStarted, StepEnded
from ..plugin.hookspecs import hookimpl
from ..plugin.metrics import MetricInfo
from .config import PROBE_METRICS, LearningConfig

__all__ = ["ProbePlugin"]


#: What the probe plugin keeps across a resume: its latest measurement.
PROBE_STATE = SavedState(values=float_values)


class ProbePlugin(Stateful):
    """Measures what the policy absorbed on the probe set every ``probe_every`` steps and at the last step.

    Args:
        config: the learning options (``reference_answer`` turns the probes on).
        kl_reference: the reference policy, as the KL monitor's option of that name ("auto", "base",
            "initial_adapter").
    """

    fail_fast = True  # a built-in: its faults are bugs to see, not plugins to disable
    STATE = PROBE_STATE

    def __init__(self, config: LearningConfig | None = None, *, kl_reference: str = "auto") -> None:
        self.config = config or LearningConfig()
        self.kl_reference = kl_reference
        self.model: Any = None
        self.engine_model: Any = None
        self.tokenizer: Any = None
        self.logits_source = LogitsSource()
        self.reference: ReferencePolicy | None = None
        self.temperature = 1.0
        self.total_steps: int | None = None
        self.probes: tuple[list[str], list[str]] | None = None
        self.values: dict[str, float] = {}

    @hookimpl
    def on_run_start(self, run: RunStarted) -> None:
        self.temperature = run.grpo.sampling.temperature
        self.total_steps = run.total_steps

    @hookimpl
    def on_adapter_ready(self, adapter: AdapterReady) -> None:
        self.model, self.tokenizer, self.engine_model = adapter.model, adapter.tokenizer, adapter.engine_model
        self.logits_source = LogitsSource()  # checked against this model's own logits at its first probe
        if self.config.reference_answer is None:
            return
        reason = None
        if adapter.tokenizer is None:
            reason = "the integration passed no tokenizer (TRL passes processing_class; Lightning: pass tokenizer=)"
        elif not adapter.adapter.is_lora:
            reason = "the model has no LoRA adapter, so there is no reference (adapters disabled) to compare with"
        if reason:
            warnings.warn(f"lora_rl_plugins: learning/absorbed_bits is off: {reason}.", UserWarning, stacklevel=2)
            return
        self.reference = choose_reference(self.kl_reference, adapter.model, adapter.engine_model)
        self.probes = self._probe_set()

    @hookimpl
    def on_step_end(self, step: StepEnded) -> None:
        if step.total_steps:
            self.total_steps = step.total_steps
        last = self.total_steps is not None and step.step >= self.total_steps
        if self.probes is not None and (step.step % self.config.probe_every == 0 or last):
            self.measure(step.step)

    @hookimpl
    def collect_metrics(self) -> Mapping[str, float]:
        return {f"learning/{name}": value for name, value in self.values.items()}

    @hookimpl
    def describe_metrics(self) -> Sequence[MetricInfo]:
        return PROBE_METRICS

    @hookimpl
    def summary_line(self) -> str | None:
        if "absorbed_bits" not in self.values:
            return None
        return f"absorbed {self.values['absorbed_bits']:.1f}/{self.values['answer_bits']:.1f} bits"

    def measure(self, step: int) -> None:
        """Measure absorbed and answer bits on the probe set with the model in hand."""
        from .probes import measure_probes

        assert self.probes is not None
        prompts, answers = self.probes
        result = measure_probes(
            self.model,
            self.tokenizer,
            prompts,
            answers,
            reference=self.reference,
            temperature=self.temperature,
            logits_source=self.logits_source,
            engine_model=self.engine_model,
        )
        self.values.update(absorbed_bits=result.absorbed_bits, answer_bits=result.answer_bits, probe_step=float(step))

    def _probe_set(self) -> tuple[list[str], list[str]]:
        config = self.config
        answers_of = config.reference_answer
        keys = config.probe_prompts if config.probe_prompts is not None else dict.fromkeys(answers_of)  # type: ignore[arg-type]
        pairs = []
        for prompt in list(keys)[: config.probe_max]:
            answer = answers_of.get(prompt) if isinstance(answers_of, Mapping) else answers_of(prompt)  # type: ignore[union-attr,misc]
            if answer:
                pairs.append((prompt, str(answer)))
        if not pairs:
            raise ValueError(
                "reference_answer gave no answer for any probe prompt: check probe_prompts and the answers"
            )
        return [p for p, _ in pairs], [a for _, a in pairs]
