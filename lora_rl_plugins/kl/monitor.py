"""KL monitor: measured drift of the LoRA policy from its reference, a rank-dependent bound, a budget.

Every ``kl_every`` generation batches it measures the exact KL on (up to ``kl_max_sequences``
per process of) the completions just generated, reduces it over processes, computes the
adapter's update norms and bounds, and holds ``kl_mean`` against ``kl_budget``: over budget it
warns, stops training cleanly, or turns on a KL penalty (``on_budget``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..lora.layers import lora_layers
from ..lora.sharding import engine_fixed, gathered_lora_layers
from ..plugin.base import SavedState, float_values
from ..plugin.config import option
from ..plugin.events import (
    AdapterReady,
    AdapterSummary,
    PolicySample,
    RunStarted,
    SetKLPenalty,
    StepEnded,
    StopTraining,
)
from ..plugin.grpo import GRPOSettings
from ..plugin.hookspecs import hookimpl
from ..plugin.log import logger
from ..plugin.metrics import MetricInfo, metric_family, window_mean
from .comparability import KLComparabilityWarning, active_dropout, comparability_notes, precision_note
from .reference import ReferencePolicy, choose_reference

__all__ = [
    "KL_METRICS",
    "KLBudgetWarning",
    "KLComparabilityWarning",
    "KLMonitorConfig",
    "KLMonitorPlugin",
    "comparability_notes",
    "measured_rows",
    "precision_note",
]

#: Generation batches between measurements by default. A measurement costs about two forward passes without
#: gradients (the policy's and the reference's) plus fixed work (~8 ms on the benchmarks' tiny model, where a
#: step takes ~65 ms): every 20 batches keeps the whole callback, every plugin on, at 2 % of a GRPO step or less
#: (benchmarks/overhead.py; the README's Benchmarks), with 5 KL points per 100 steps and the budget checked within
#: 20 batches of a crossing. ``kl_every=1`` measures every batch.
DEFAULT_KL_EVERY = 20
#: Sequences measured per process by default (``measured_rows``): on a compute-bound model a measurement costs in
#: proportion to them (two forward passes of each), and 8 evenly spaced sequences sample every prompt of a batch
#: of up to 8 groups.
DEFAULT_MAX_SEQUENCES = 8
#: Output layers the single-layer bound applies to.
OUTPUT_LAYER_NAMES = ("lm_head", "embed_out", "output")


def measured_rows(batch: int, limit: int) -> slice | list[int]:
    """The rows of a [batch, ...] sample the monitor measures: all (``slice(None)``) when ``batch <= limit``, else
    the ``limit`` evenly spaced rows ⌊i·batch/limit⌋, i = 0 .. limit − 1 (a group of K consecutive rollouts gets
    about K·limit/batch of them).

    Raises:
        ValueError: ``limit`` < 1.
    """
    if limit < 1:
        raise ValueError(f"kl_max_sequences must be >= 1, got {limit}")
    if batch <= limit:
        return slice(None)
    return [(i * batch) // limit for i in range(limit)]


def _standard_error(total: float, total_squared: float, count: float) -> float:
    """Standard error of a mean from its sum and sum of squares: sqrt((E[x²] − E[x]²) / n)."""
    mean = total / count
    return max(total_squared / count - mean * mean, 0.0) ** 0.5 / count**0.5


class KLBudgetWarning(UserWarning):
    """The measured KL exceeded ``kl_budget``."""


_m = metric_family("kl_monitor", group="kl_monitor/measurement")  # one measurement's values


#: How a measured KL value reaches a log line (TRL, Lightning, the run log): published only at the step of a new
#: measurement, averaged like the trainer's own per-step metrics (TRL's `kl` is the logging window's mean of its
#: per-step k3), so one log line holds the mean of the measurements taken within its window; a window without a
#: measurement has no kl_monitor/* values (kl_monitor/measured_step says which step was measured last).
WINDOW = " (a log line: the mean over the measurements in its logging window, like TRL's `kl`)"

KL_METRICS: tuple[MetricInfo, ...] = (
    _m(
        "kl_mean",
        "exact",
        "nats/token",
        "full-vocabulary KL(π_θ‖π_ref) at each measured completion token, from the model's own logits at the "
        "sampling temperature (full distributions, no top_k/top_p; eval mode; float64 after the logits), averaged "
        "over tokens" + WINDOW,
        reduce="mean",
        short="KL",
    ),
    _m(
        "kl_seq_mean",
        "exact",
        "nats/sequence",
        "Σ over a sequence's completion tokens of the per-token KL, averaged over sequences" + WINDOW,
        reduce="mean",
    ),
    _m(
        "kl_max",
        "exact",
        "nats/token",
        "largest per-token KL(π_θ‖π_ref) among a measurement's tokens" + WINDOW,
        reduce="mean",
    ),
    _m(
        "reverse_kl_mean",
        "exact",
        "nats/token",
        "full-vocabulary KL(π_ref‖π_θ), averaged over tokens" + WINDOW,
        reduce="mean",
    ),
    _m(
        "k3_mean",
        "estimate",
        "nats/token",
        "TRL's k3 estimator exp(ref−logp)−(ref−logp)−1 on the sampled tokens, averaged over tokens; comparable to "
        "TRL's `kl`" + WINDOW,
        reduce="mean",
    ),
    _m(
        "k3_stderr",
        "estimate",
        "nats/token",
        "standard error of a measurement's k3_mean, sqrt((E[k3²] − E[k3]²)/tokens); a log line's mean of these is "
        ">= the standard error of the window's mean k3 (independent measurements)",
        reduce="mean",
    ),
    _m(
        "certificate",
        "bound",
        "nats/token",
        "mean over tokens of (max δ − min δ)²/8, δ the log-probability shift: "
        ">= kl_mean and >= reverse_kl_mean (Hoeffding)" + WINDOW,
        reduce="mean",
    ),
    _m(
        "bound",
        "bound",
        "nats/token",
        "single-layer bound (γ‖BA‖₂)²H²/(4T²) on every token's KL, H the largest feature norm measured; reported "
        "only when the output layer is the only adapted module and its output (soft-capped or not) is the model's "
        "logits" + WINDOW,
        reduce="mean",
    ),
    _m("budget", "setting", "nats/token", "kl_budget: the largest kl_mean allowed", group=""),
    _m("update_spectral_max", "exact", "norm", "largest γ‖B_m A_m‖₂ over the adapted matrices (each expert its own)"),
    _m("update_frobenius", "exact", "norm", "√Σ_m (γ‖B_m A_m‖_F)² over the adapted matrices (each expert its own)"),
    _m(
        "norms/<module>/<norm>",
        "exact",
        "norm",
        "each adapted module's γ‖BA‖₂ (<norm> = spectral) and γ‖BA‖_F (frobenius), each expert its own "
        "(<module>[e]), when kl_module_norms allows",
        detail=True,
    ),
    _m(
        "measured_step",
        "exact",
        "step",
        "the optimizer step of the latest measurement (in a log line only when its window holds one)",
    ),
    _m("penalty_beta", "setting", "coefficient", "KL-penalty coefficient the monitor set (0 = KL-free)", group=""),
)


@dataclass
class KLMonitorConfig:
    """Options of the KL monitor; each field's ``doc`` is its documentation."""

    kl_free: bool = option(
        False,
        doc='no reference model, no "ref" adapter, no reference forward pass (`beta` must be 0.0; '
        "contradicting settings raise `KLFreeError`). The KL monitor stays on",
    )
    kl_every: int = option(
        DEFAULT_KL_EVERY,
        doc="generation batches between KL measurements (1 = every batch; the default keeps every plugin together at "
        "2 % of a step or less, see Benchmarks)",
    )
    kl_max_sequences: int = option(
        DEFAULT_MAX_SEQUENCES,
        doc="sequences measured per process: all of a batch of at most this many, else this many evenly spaced "
        "(rows ⌊i·B/N⌋, so every prompt's group is sampled while the batch holds at most N groups)",
    )
    kl_budget: float | None = option(doc="the largest `kl_monitor/kl_mean` (nats/token) allowed; None = no budget")
    on_budget: Literal["warn", "stop", "penalize"] = option(
        "warn",
        doc='beyond the budget: "warn" (a `KLBudgetWarning`), "stop" (a clean stop through the trainer\'s '
        'control flow) or "penalize" (a KL penalty `kl_penalty_beta` toward the reference from the next '
        "generation batch; saved in checkpoints)",
    )
    kl_penalty_beta: float = option(0.04, doc='the KL coefficient on_budget="penalize" turns on')
    kl_reference: Literal["auto", "base", "initial_adapter"] = option(
        "auto",
        doc='"auto" (TRL\'s frozen "ref" adapter if the model has one, else adapters disabled), "base" '
        '(adapters disabled) or "initial_adapter" (a snapshot of the adapter as this run started: an adapter '
        "trained before this run, TRL issue #3194)",
    )
    kl_module_norms: bool | Literal["auto"] = option(
        "auto", doc='log each module\'s update norms ("auto": when there are at most 64 modules)'
    )

    def __post_init__(self) -> None:
        if self.kl_every < 1:
            raise ValueError(f"kl_every must be >= 1 (generation batches between measurements), got {self.kl_every}")
        if self.kl_max_sequences < 1:
            raise ValueError(f"kl_max_sequences must be >= 1, got {self.kl_max_sequences}")
        if self.kl_budget is not None and not self.kl_budget > 0:
            raise ValueError(f"kl_budget must be a positive number of nats per token, got {self.kl_budget}")
        if self.on_budget not in ("warn", "stop", "penalize"):
            raise ValueError(f"on_budget must be 'warn', 'stop' or 'penalize', got {self.on_budget!r}")
        if self.on_budget != "warn" and self.kl_budget is None:
            raise ValueError(f"on_budget={self.on_budget!r} needs a kl_budget")
        if not self.kl_penalty_beta > 0:
            raise ValueError(f"kl_penalty_beta must be > 0, got {self.kl_penalty_beta}")
        if self.kl_reference not in ("auto", "base", "initial_adapter"):
            raise ValueError(f"kl_reference must be 'auto', 'base' or 'initial_adapter', got {self.kl_reference!r}")
        if self.kl_module_norms not in (True, False, "auto"):
            raise ValueError(f"kl_module_norms must be True, False or 'auto', got {self.kl_module_norms!r}")


#: What the monitor keeps across a resume.
KL_STATE = SavedState(
    batches_seen=int,
    values=float_values,
    module_norms=lambda saved: {k: float_values(v) for k, v in saved.items()},
    penalty_beta=float,
    over_budget=bool,
    budget_actions=int,
    measurement_window=lambda saved: [float_values(values) for values in saved],
)


#: The monitor's metrics a trainer averages over its logging window (``reduce == "mean"``).
_AVERAGED = frozenset(info.name.removeprefix("kl_monitor/") for info in KL_METRICS if info.reduce == "mean")


def _window_values(measurements: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The values to publish for the measurements since the last collection: the latest measurement's, each
    averaged one (``_AVERAGED``) replaced by its mean over the measurements that have it."""
    if len(measurements) <= 1:
        return dict(measurements[0]) if measurements else {}
    values = dict(measurements[-1])
    for name in _AVERAGED & values.keys():
        values[name] = window_mean([m[name] for m in measurements if name in m])
    return values


class KLMonitorPlugin:
    """Measures KL(π_θ‖π_ref) on generated completions and enforces a budget.

    Args:
        config: the monitor's options.
        required: the user asked for the monitor (KL-free mode, a budget, a cadence): a model
            without LoRA is then a ``NotALoraModelError`` instead of a one-time info (logger ``lora_rl_plugins``).
    """

    fail_fast = True  # a built-in: its faults are bugs to see, not plugins to disable

    def __init__(self, config: KLMonitorConfig | None = None, *, required: bool = False) -> None:
        self.config = config or KLMonitorConfig()
        self.required = required
        self.active = True
        self.adapter: AdapterSummary | None = None
        self.reference: ReferencePolicy | None = None
        self.engine_model: Any = None
        # run state (get_state)
        self.batches_seen = 0
        self.values: dict[str, float] = {}
        self.measurement_window: list[dict[str, float]] = []  # not yet collected: their mean is published (WINDOW)
        self.module_norms: dict[str, dict[str, float]] = {}
        self.penalty_beta = 0.0
        self.over_budget = False
        self.budget_actions = 0
        self._pending_action: StopTraining | SetKLPenalty | None = None
        self.grpo = GRPOSettings()
        self.logits_source: Any = None
        self._engines: dict[tuple[int, int], str] = {}
        self._views: list[Any] | None = None
        self.only_output_layer = False

    # -- hooks ------------------------------------------------------------------------------
    @hookimpl
    def on_run_start(self, run: RunStarted) -> None:
        self.grpo = run.grpo

    @hookimpl
    def on_adapter_ready(self, adapter: AdapterReady) -> None:
        from .measure import LogitsSource

        self.logits_source = LogitsSource()  # checked against the model's own logits at the first measurement
        self.adapter = adapter.adapter
        self._engines = {}  # the run's engine, found at its first measurement
        self._views = None  # the adapter's LoRA layers, found once (full parameters only)
        if not adapter.adapter.is_lora:
            if self.required:
                ReferencePolicy.require_lora(adapter.model)
            self.active = False
            # an info, not a warning: nobody asked for the monitor (``required`` would have refused above)
            logger.info(
                "lora_rl_plugins: the KL monitor is off: it measures drift through the model's LoRA adapter and "
                "this model has none."
            )
            return
        self.engine_model = adapter.engine_model
        self.reference = choose_reference(self.config.kl_reference, adapter.model, adapter.engine_model)
        note = precision_note(self.grpo)
        if note:
            logger.info("lora_rl_plugins: %s.", note)
        notes = comparability_notes(self.grpo, active_dropout(adapter.model) if adapter.model else ())
        if notes:
            warnings.warn(
                "lora_rl_plugins: the exact KL (kl_monitor/kl_mean) and the trainer's k3 `kl` measure different "
                "things in this run: " + "; ".join(notes) + ".",
                KLComparabilityWarning,
                stacklevel=2,
            )

    @hookimpl
    def on_policy_sampled(self, sample: PolicySample) -> None:
        if not self.active:
            return
        due = self.batches_seen % self.config.kl_every == 0
        self.batches_seen += 1
        if due:
            self.measure(sample)

    @hookimpl
    def on_step_end(self, step: StepEnded) -> Sequence[StopTraining | SetKLPenalty] | None:
        action, self._pending_action = self._pending_action, None
        return [action] if action is not None else None

    @hookimpl
    def collect_metrics(self) -> Mapping[str, float]:
        """The measurements since the last collection, once: the latest one's values, the averaged ones
        (``WINDOW``) as their mean over those measurements (the trainer averages what it is given over its
        logging window, so a log line holds the mean over the measurements in its window whether the trainer
        collects at every step or only at its logging steps); the settings at every collection. Module norms
        (detail) are the latest measurement's."""
        window, self.measurement_window = self.measurement_window, []
        fresh = bool(window)
        values = _window_values(window)
        if self.config.kl_budget is not None:
            values["budget"] = self.config.kl_budget
        if self.values:
            values["penalty_beta"] = self.penalty_beta
        metrics = {f"kl_monitor/{name}": value for name, value in values.items()}
        if fresh and self._log_module_norms():
            for module, norms in self.module_norms.items():
                for kind, value in norms.items():
                    metrics[f"kl_monitor/norms/{module}/{kind}"] = value
        return metrics

    @hookimpl
    def describe_metrics(self) -> Sequence[MetricInfo]:
        return KL_METRICS

    @hookimpl
    def summary_line(self) -> str | None:
        if "kl_mean" not in self.values:
            return None
        line = f"KL {self.values['kl_mean']:.3g}"
        if self.config.kl_budget is not None:
            line += f"/{self.config.kl_budget:g} budget"
        return line

    @hookimpl
    def get_state(self) -> Mapping[str, Any]:
        return {**KL_STATE.save(self), "config": asdict(self.config)}

    @hookimpl
    def set_state(self, state: Mapping[str, Any]) -> None:
        KL_STATE.load(self, state)

    # -- measurement ------------------------------------------------------------------------
    def measure(self, sample: PolicySample) -> None:
        """Measure on ``sample`` (this process's share), reduce over processes, update bounds and budget."""
        with engine_fixed(self._engines):  # found once per run: the engine does not change while it trains
            values = self._measure(sample)
        if values is None:
            return
        self.values = values
        self.measurement_window.append(values)
        self._check_budget(values["kl_mean"], sample.step)

    def _measure(self, sample: PolicySample) -> dict[str, float] | None:
        """The measurement's values (None when no process had a completion token)."""
        from .measure import KLSums, measure_kl

        rows = measured_rows(sample.input_ids.shape[0], self.config.kl_max_sequences)
        # Every process measures, even with no sequences: under FSDP/ZeRO-3 the forward passes are collective.
        local: KLSums = measure_kl(
            sample.model,
            sample.input_ids[rows],
            sample.attention_mask[rows],
            sample.completion_mask[rows],
            reference=self.reference,
            temperature=sample.temperature,
            logits_source=self.logits_source,
            engine_model=sample.engine_model,
        )
        total = local.reduce(sample.collective)
        if total.tokens == 0:
            return None
        values = {
            "kl_mean": total.kl / total.tokens,
            "kl_seq_mean": total.sequence_kl / max(total.sequences, 1.0),
            "kl_max": total.kl_max,
            "reverse_kl_mean": total.reverse_kl / total.tokens,
            "k3_mean": total.k3 / total.tokens,
            "k3_stderr": _standard_error(total.k3, total.k3_squared, total.tokens),
            "certificate": total.certificate / total.tokens,
            "measured_step": float(sample.step),
        }
        values.update(
            self._update_bounds(sample.model, total.feature_norm_max, sample.temperature, sample.engine_model)
        )
        return values

    def _update_bounds(
        self, model: Any, feature_norm: float, temperature: float, engine_model: Any = None
    ) -> dict[str, float]:
        from .bounds import expert_update_norms, many_update_norms, single_layer_kl_bound

        name = self.adapter.adapter_name if self.adapter else None
        norms: dict[str, dict[str, float]] = {}
        output_spectral = None
        inner = False
        spectral_max, frobenius_sq = 0.0, 0.0
        full = gathered_lora_layers(model, engine_model, name)  # collective under FSDP/ZeRO-3, else None
        if full is not None:
            views = list(full)
        else:  # full parameters: the same layers, updated in place, at every measurement
            if self._views is None:
                self._views = list(lora_layers(model, name, per_expert=False))
            views = self._views
        plain = [view for view in views if view.kind != "experts"]  # one batched computation per shape
        computed = iter(many_update_norms([(view.weight_b, view.weight_a, view.scaling) for view in plain]))
        for view in views:
            if view.kind == "experts":  # fused experts: each expert's own update, batched
                per = expert_update_norms(view.weight_b, view.weight_a, view.scaling, view.experts)
                results = [(f"{view.name}[{e}]", result) for e, result in enumerate(per)]
            else:
                results = [(view.name, next(computed))]
            for module, result in results:
                norms[module] = {"spectral": result.spectral, "frobenius": result.frobenius}
                spectral_max = max(spectral_max, result.spectral)
                frobenius_sq += result.frobenius**2
                if module.split(".")[-1] in OUTPUT_LAYER_NAMES:
                    output_spectral = result.spectral
                else:
                    inner = True
        self.module_norms = norms
        values = {"update_spectral_max": spectral_max, "update_frobenius": frobenius_sq**0.5}
        # docs/theory.md §3: a bound only when the output layer is the only adapted module and the logits are
        # (a 1-Lipschitz elementwise function of) W·h, as proved against the model's own logits
        source = self.logits_source
        self.only_output_layer = output_spectral is not None and not inner
        if self.only_output_layer and source is not None and source.bound_applies:
            values["bound"] = single_layer_kl_bound(output_spectral, feature_norm, temperature)
        return values

    def _check_budget(self, kl_mean: float, step: int) -> None:
        budget = self.config.kl_budget
        if budget is None:
            return
        if kl_mean <= budget:
            self.over_budget = False
            return
        if self.over_budget:  # already acted on this excursion
            return
        self.over_budget = True
        self.budget_actions += 1
        message = f"lora_rl_plugins: measured KL {kl_mean:.4g} nats/token exceeds kl_budget={budget:g} at step {step}"
        action = self.config.on_budget
        if action == "warn":
            warnings.warn(message + ".", KLBudgetWarning, stacklevel=2)
        elif action == "stop":
            logger.warning("%s: stopping training (on_budget='stop').", message)
            self._pending_action = StopTraining(message)
        elif self.penalty_beta == 0:
            self.penalty_beta = self.config.kl_penalty_beta
            logger.warning(
                "%s: turning on the KL penalty beta=%g from the next generation batch (on_budget='penalize').",
                message,
                self.penalty_beta,
            )
            self._pending_action = SetKLPenalty(self.penalty_beta, message)

    def _log_module_norms(self) -> bool:
        setting = self.config.kl_module_norms
        return len(self.module_norms) <= 64 if setting == "auto" else bool(setting)
