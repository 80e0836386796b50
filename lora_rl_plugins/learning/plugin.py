"""The learning plugin: information absorbed on a probe set, the per-prompt ledger, signal exhaustion
and the state of informative prompt sampling (docs/theory.md §1, §8).

The chain a run obeys, in bits: structural bound (``bandwidth/bound_*``) ≥ signal
(``bandwidth/bits_*``, a rate: it recounts a lesson at every step) ≥ information absorbed
(``learning/absorbed_bits``) ≤ what there was to learn (``learning/answer_bits``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..bandwidth.advantages import AdvantageSettings, advantage_pattern, grpo_advantages
from ..bandwidth.information import group_empirical_bits
from ..bandwidth.rewards import combine_rewards, split_groups
from ..kl.measure import LogitsSource
from ..kl.reference import ReferencePolicy
from ..lora.adapters import summarize_adapter
from ..plugin.config import option
from ..plugin.events import AdapterReady, RolloutsScored, RunStarted, StepEnded, StopTraining
from ..plugin.hookspecs import hookimpl
from ..plugin.log import logger
from ..plugin.metrics import MetricInfo
from .ledger import PromptLedger, classify_group, prompt_key
from .sampling import InformativeSelector

__all__ = ["LEARNING_METRICS", "LearningConfig", "LearningPlugin", "LedgerEvictionWarning", "SignalExhaustedWarning"]


class SignalExhaustedWarning(UserWarning):
    """Too few groups delivered any signal over the window (``on_signal_exhausted="warn"``)."""


class LedgerEvictionWarning(UserWarning):
    """The per-prompt ledger reached ``ledger_max_prompts`` and evicts the least recently visited prompts."""


def _m(name: str, kind: str, unit: str, definition: str, reduce: str = "last") -> MetricInfo:
    return MetricInfo(f"learning/{name}", kind, unit, definition, reduce)  # type: ignore[arg-type]


LEARNING_METRICS: tuple[MetricInfo, ...] = (
    _m(
        "absorbed_bits",
        "exact",
        "bits",
        "information absorbed on the probe set: Σ_probe log2 π_θ(answer|prompt) − log2 π_ref(answer|prompt), "
        "teacher-forced at the sampling temperature (π_ref: adapters disabled); ≤ answer_bits",
    ),
    _m(
        "answer_bits",
        "exact",
        "bits",
        "what there is to learn about the probe answers: Σ_probe −log2 π_ref(answer|prompt)",
    ),
    _m("probe_step", "exact", "step", "the optimizer step of the latest probe measurement"),
    _m("prompts_seen", "exact", "prompts", "distinct prompts in the per-prompt ledger"),
    _m("solved_frac", "exact", "fraction", "prompts seen whose latest group was all at the top reward"),
    _m("unsolved_frac", "exact", "fraction", "prompts seen whose latest group was all at the bottom reward"),
    _m(
        "informative_frac",
        "exact",
        "fraction",
        "prompts seen whose latest group had advantages not all zero (a signal; the trainer's advantages, as for "
        "bandwidth/zero_info_frac)",
    ),
    _m(
        "signal_window_frac",
        "exact",
        "fraction",
        "groups whose advantages were not all zero / groups, over the last `signal_window` steps",
    ),
    _m(
        "rollouts_skipped",
        "exact",
        "rollouts",
        "K × prompts informative sampling passed over among each batch's next prompts of the stream (groups a plain "
        "draw would have generated on prompts that taught nothing lately), over the run",
    ),
    _m(
        "generation_seconds_saved",
        "estimate",
        "seconds",
        "rollouts_skipped × measured generation wall seconds per rollout (the slowest process's generation time "
        "of a batch / the batch's rollouts)",
    ),
)


@dataclass
class LearningConfig:
    """Options of the learning plugin; each field's ``doc`` is its documentation."""

    reference_answer: Callable[[Any], str | None] | Mapping[str, str] | None = option(
        doc="the answer a correct policy emits (or its prefix) for a prompt: a callable prompt -> answer text, or a "
        "mapping (e.g. `dict(zip(ds['prompt'], ds['answer']))`); turns on `learning/absorbed_bits`",
    )
    probe_prompts: Sequence[str] | None = option(
        doc="the fixed probe set (prompt texts); default: the mapping's keys (up to `probe_max`)"
    )
    probe_max: int = option(256, doc="at most this many probe prompts")
    probe_every: int = option(10, doc="optimizer steps between probe measurements (and at the last step)")
    ledger_max_prompts: int = option(
        100_000, doc="prompts the per-prompt ledger keeps; past it the least recently visited is evicted (warned)"
    )
    solved_reward: float | None = option(
        doc="the combined reward of a correct rollout (a group all at it counts as solved); default: the largest "
        "seen so far"
    )
    on_signal_exhausted: Literal["off", "warn", "stop"] = option(
        "warn",
        doc="when the fraction of groups with a signal stays below `signal_threshold` over `signal_window` steps: "
        '"warn" (a `SignalExhaustedWarning` naming the solved/unsolved split), "stop" (a clean stop) or "off"',
    )
    signal_window: int = option(20, doc="steps over which the informative fraction of groups is taken")
    signal_threshold: float = option(0.05, doc="informative fraction of groups below which the signal is exhausted")
    informative_sampling: bool = option(
        False,
        doc="skip prompts whose last `skip_after` visits delivered no signal (solved ones; all with "
        "`skip_unsolved`), before generating them (TRL and the Lightning reference module; batches stay full)",
    )
    skip_after: int = option(2, doc="k: visits without signal after which informative sampling skips a prompt")
    revisit: float = option(0.1, doc="probability of drawing a prompt informative sampling would skip")
    skip_unsolved: bool = option(
        False,
        doc="informative sampling also skips prompts whose zero-signal visits were unsolved (all at the bottom "
        "reward); off: a prompt too hard now improves only by being tried (see the benchmark)",
    )

    def __post_init__(self) -> None:
        if self.reference_answer is not None and not (
            callable(self.reference_answer) or isinstance(self.reference_answer, Mapping)
        ):
            raise TypeError("reference_answer must be a callable prompt -> answer or a mapping prompt -> answer")
        callable_answer = self.reference_answer is not None and not isinstance(self.reference_answer, Mapping)
        if callable_answer and not self.probe_prompts:
            raise ValueError("a callable reference_answer needs probe_prompts (the fixed probe set)")
        if self.probe_prompts is not None and isinstance(self.probe_prompts, str):
            raise TypeError("probe_prompts must be a sequence of prompt texts, not one string")
        for name in ("probe_max", "probe_every", "ledger_max_prompts", "signal_window", "skip_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.on_signal_exhausted not in ("off", "warn", "stop"):
            raise ValueError(f"on_signal_exhausted must be 'off', 'warn' or 'stop', got {self.on_signal_exhausted!r}")
        if not 0.0 <= self.signal_threshold <= 1.0:
            raise ValueError(f"signal_threshold must be a fraction in [0, 1], got {self.signal_threshold}")
        if not 0.0 <= self.revisit <= 1.0:
            raise ValueError(f"revisit must be a probability in [0, 1], got {self.revisit}")


class LearningPlugin:
    """Measures what the policy absorbed, keeps the per-prompt ledger, and watches the signal run out."""

    fail_fast = True  # a built-in: its faults are bugs to see, not plugins to disable

    def __init__(self, config: LearningConfig | None = None) -> None:
        self.config = config or LearningConfig()
        self.ledger = PromptLedger(self.config.ledger_max_prompts)
        self.model: Any = None
        self.engine_model: Any = None
        self.tokenizer: Any = None
        self.logits_source = LogitsSource()
        self.advantage_settings = AdvantageSettings()
        self.reference: ReferencePolicy | None = None
        self.temperature = 1.0
        self.group_size = 0
        self.total_steps: int | None = None
        self.probes: tuple[list[str], list[str]] | None = None
        self.selector: InformativeSelector | None = None
        # run state (get_state)
        self.values: dict[str, float] = {}
        self.window: list[tuple[int, int]] = []
        """(informative groups, groups) of each of the last ``signal_window`` steps."""
        self.top = -math.inf
        self.bottom = math.inf
        self.exhausted = False
        self.warned: set[str] = set()
        self.cursor: dict[str, Any] = {"epoch": 0, "position": 0, "draws": []}
        self.skipped_prompts = 0
        self.seconds_per_rollout = 0.0
        self._pending = [0, 0]
        self._action: StopTraining | None = None
        self._resumed = False

    # -- hooks ------------------------------------------------------------------------------
    @hookimpl
    def on_run_start(self, run: RunStarted) -> None:
        self.temperature = float(run.options.get("temperature", 1.0) or 1.0)
        self.advantage_settings = AdvantageSettings.from_options(run.options)
        self.group_size = run.group_size or 0
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
        elif not summarize_adapter(adapter.model).is_lora:
            reason = "the model has no LoRA adapter, so there is no reference (adapters disabled) to compare with"
        if reason:
            warnings.warn(f"lora_rl_plugins: learning/absorbed_bits is off: {reason}.", UserWarning, stacklevel=2)
            return
        peft_config = getattr(adapter.model, "peft_config", {}) or {}
        self.reference = ReferencePolicy("adapter", "ref") if "ref" in peft_config else ReferencePolicy("disable")
        self.probes = self._probe_set()

    @hookimpl
    def on_rollouts_scored(self, batch: RolloutsScored) -> None:
        combined = combine_rewards(batch.rewards, batch.reward_names, batch.reward_weights)
        scored = [r for r in combined if not math.isnan(r)]
        if scored:
            self.top, self.bottom = max(self.top, *scored), min(self.bottom, *scored)
        top = self.config.solved_reward if self.config.solved_reward is not None else self.top
        groups = split_groups(combined, batch.group_size)
        # informative = the trainer's advantages are not all zero: the bandwidth plugin's zero_info, same settings
        advantages = grpo_advantages(batch.rewards, batch.group_size, batch.reward_weights, self.advantage_settings)
        zero_groups = advantages.zero_groups()
        keys = batch.prompt_keys
        if keys is not None and len(keys) != len(combined):
            raise ValueError(f"{len(keys)} prompt keys for {len(combined)} rollouts: give exactly one per rollout")
        prompts = batch.prompts if batch.prompts is not None and len(batch.prompts) == len(combined) else None
        for g, rewards in enumerate(groups):
            outcome = classify_group(rewards, top, self.bottom, zero_info=zero_groups[g])
            self._pending[0] += outcome == "informative"
            self._pending[1] += 1
            if keys is None:
                continue
            values = [r for r in rewards if not math.isnan(r)]
            scored = [a for a, r in zip(advantages.group(g), rewards, strict=True) if not math.isnan(r)]
            # the bandwidth estimate before its cap: n·H(pattern of the trainer's advantages), 0 when all are zero
            bits = 0.0 if zero_groups[g] else group_empirical_bits(advantage_pattern(scored, advantages.tolerance))
            mean = sum(values) / len(values) if values else float("nan")
            first = g * batch.group_size
            evicted = self.ledger.visit(
                keys[first],
                outcome=outcome,
                reward_mean=mean,
                bits=bits,
                step=batch.step,
                prompt=prompts[first] if prompts else None,
            )
            if evicted:
                self._warn_once(
                    "evicted",
                    f"lora_rl_plugins: the per-prompt ledger holds ledger_max_prompts={self.ledger.max_prompts} "
                    "prompts; the least recently visited are evicted (their history is forgotten). Raise "
                    "ledger_max_prompts if the dataset is larger and memory allows.",
                    LedgerEvictionWarning,
                )
        if batch.generation_seconds is not None and combined:
            self.seconds_per_rollout = batch.generation_seconds / len(combined)

    @hookimpl
    def on_step_end(self, step: StepEnded) -> Sequence[StopTraining] | None:
        if step.total_steps:
            self.total_steps = step.total_steps
        if self._pending[1]:
            self.window.append((self._pending[0], self._pending[1]))
            self.window = self.window[-self.config.signal_window :]
        self._pending = [0, 0]
        if self.config.informative_sampling and self.selector is None:
            self._warn_once(
                "no_selector",
                "lora_rl_plugins: informative_sampling=True, but nothing draws prompts through it: TRL installs it "
                "on GRPOTrainer's sampler (map-style datasets only; an iterable dataset is streamed without one), "
                "Lightning through callback.informative_sampler(prompts) passed to your prompt stream.",
                UserWarning,
            )
        self._check_signal(step.step)
        last = self.total_steps is not None and step.step >= self.total_steps
        if self.probes is not None and (step.step % self.config.probe_every == 0 or last):
            self.measure(step.step)
        action, self._action = self._action, None
        return [action] if action is not None else None

    @hookimpl
    def collect_metrics(self) -> Mapping[str, float]:
        values = dict(self.values)
        if len(self.ledger):
            values["prompts_seen"] = float(len(self.ledger))
            values.update({f"{name}_frac": v for name, v in self.ledger.fractions().items()})
        if self.window:
            values["signal_window_frac"] = self.signal_fraction
        if self.config.informative_sampling:
            values["rollouts_skipped"] = float(self.skipped_prompts * self.group_size)
            values["generation_seconds_saved"] = self.skipped_prompts * self.group_size * self.seconds_per_rollout
        return {f"learning/{name}": value for name, value in values.items()}

    @hookimpl
    def describe_metrics(self) -> Sequence[MetricInfo]:
        return LEARNING_METRICS

    @hookimpl
    def summary_line(self) -> str | None:
        if "absorbed_bits" not in self.values:
            return None
        return f"absorbed {self.values['absorbed_bits']:.1f}/{self.values['answer_bits']:.1f} bits"

    @hookimpl
    def get_state(self) -> Mapping[str, Any]:
        return {
            "values": dict(self.values),
            "window": [list(w) for w in self.window],
            "top": self.top if math.isfinite(self.top) else None,
            "bottom": self.bottom if math.isfinite(self.bottom) else None,
            "exhausted": self.exhausted,
            "warned": sorted(self.warned),
            "cursor": {**self.cursor, "draws": list(self.cursor["draws"])},
            "skipped_prompts": self.skipped_prompts,
            # not seconds_per_rollout: a wall-time measurement, re-measured at every batch, no resume could repeat it
            "ledger": self.ledger.get_state(),
        }

    @hookimpl
    def set_state(self, state: Mapping[str, Any]) -> None:
        self.values = {k: float(v) for k, v in state["values"].items()}
        self.window = [(int(a), int(b)) for a, b in state["window"]]
        self.top = -math.inf if state["top"] is None else float(state["top"])
        self.bottom = math.inf if state["bottom"] is None else float(state["bottom"])
        self.exhausted = bool(state["exhausted"])
        self.warned = set(state["warned"])
        cursor = state["cursor"]
        self.cursor = {
            "epoch": int(cursor["epoch"]),
            "position": int(cursor["position"]),
            "draws": list(cursor["draws"]),
        }
        self._resumed = True
        self.skipped_prompts = int(state["skipped_prompts"])
        self.ledger.set_state(state["ledger"])
        self._pending = [0, 0]

    # -- informative sampling -----------------------------------------------------------------
    def make_selector(self, key_of: Callable[[int], Hashable], size: int, seed: int) -> InformativeSelector:
        """The selector an integration's sampler draws prompts through (shares this plugin's ledger)."""
        self.selector = InformativeSelector(
            self.ledger,
            key_of,
            size,
            skip_after=self.config.skip_after,
            revisit=self.config.revisit,
            seed=seed,
            skip_unsolved=self.config.skip_unsolved,
        )
        return self.selector

    def draw(self, count: int, shuffle: bool = True) -> list[int]:
        """The next ``count`` prompt indices of the informative stream (replaying, after a resume, the draws
        the trainer skips again), recording the draw so a resume reproduces it.

        Raises:
            RuntimeError: ``make_selector`` was not called.
        """
        if self.selector is None:
            raise RuntimeError("informative sampling has no selector: the integration must call make_selector()")
        replay = self.cursor.get("replay")
        if replay:
            chosen, self.cursor["replay"] = replay[:count], replay[count:]
            if len(chosen) == count:
                return chosen
        before = self.selector.skipped
        chosen = self.selector.draw(count, self.cursor, shuffle)
        self.skipped_prompts += self.selector.skipped - before
        self.cursor["draws"] = (list(self.cursor["draws"]) + chosen)[-4 * self.selector.size :]
        return chosen

    def new_epoch(self) -> None:
        """A trainer that re-iterates its sampler from the epoch start on resume (TRL) calls this when it
        starts iterating: after a resume the epoch's recorded draws are replayed first (the trainer skips the
        batches it already trained), else the record starts afresh."""
        if self._resumed:
            self.cursor["replay"] = list(self.cursor["draws"])
            self._resumed = False
        else:
            self.cursor["draws"] = []

    key = staticmethod(prompt_key)

    # -- measurement ------------------------------------------------------------------------
    @property
    def signal_fraction(self) -> float:
        """Informative groups / groups over the window (NaN before any group)."""
        groups = sum(b for _, b in self.window)
        return sum(a for a, _ in self.window) / groups if groups else float("nan")

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
        prompts = list(keys)
        prompts = prompts[: config.probe_max]
        pairs = []
        for prompt in prompts:
            answer = answers_of.get(prompt) if isinstance(answers_of, Mapping) else answers_of(prompt)  # type: ignore[union-attr,misc]
            if answer:
                pairs.append((prompt, str(answer)))
        if not pairs:
            raise ValueError(
                "reference_answer gave no answer for any probe prompt: check probe_prompts and the answers"
            )
        return [p for p, _ in pairs], [a for _, a in pairs]

    def _check_signal(self, step: int) -> None:
        config = self.config
        if config.on_signal_exhausted == "off" or len(self.window) < config.signal_window:
            return
        fraction = self.signal_fraction
        if fraction >= config.signal_threshold:
            self.exhausted = False
            return
        if self.exhausted:
            return
        self.exhausted = True
        split = self.ledger.fractions()
        detail = (
            f"of the {len(self.ledger)} prompts seen, {split['solved']:.0%} are solved (every rollout at the top "
            f"reward) and {split['unsolved']:.0%} unsolved (every rollout at the bottom)"
            if split
            else "the integration passed no prompt keys, so the solved/unsolved split is unknown"
        )
        message = (
            f"lora_rl_plugins: the reward signal ran out at step {step}: only {fraction:.1%} of groups over the last "
            f"{config.signal_window} steps had advantages not all zero (signal_threshold={config.signal_threshold:g}); "
            f"{detail}. "
            "Mostly solved: the data is too easy (harder prompts or stop); mostly unsolved: too hard (easier prompts, "
            "more generations, a warm-up)"
        )
        if config.on_signal_exhausted == "warn":
            warnings.warn(message + ".", SignalExhaustedWarning, stacklevel=2)
        else:
            logger.warning("%s: stopping training (on_signal_exhausted='stop').", message)
            self._action = StopTraining(message)

    def _warn_once(self, key: str, message: str, category: type[Warning]) -> None:
        if key in self.warned:
            return
        self.warned.add(key)
        warnings.warn(message, category, stacklevel=3)
