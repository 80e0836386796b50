"""``lora-rl demo``: GRPO + LoRA through TRL on the codebook task, with the callback on.

Trains the tiny local model (no download) for a few hundred steps on 2 CPU cores, or another
``DemoSetup`` (``demo/smollm2.py``: SmolLM2-135M-Instruct on addition), and prints what the run
learned: reward curve, the signal per step and in total (estimate and bound), the bits absorbed on
the probe set where the task has reference answers, adapter capacity and the smallest rank that
would have held the signal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..plugin.metrics import format_percent
from ..report.textplot import sparkline
from .setup import DemoSetup, tiny_setup

__all__ = ["DEMO_KL_BUDGET", "DemoResult", "format_summary", "run_demo"]

#: The demo's KL budget (nats/token): a policy this far from its base no longer answers like it.
DEMO_KL_BUDGET = 1.0


@dataclass
class DemoResult:
    """What the demo run logged, step by step, and its final totals."""

    steps: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    bits_step: list[float] = field(default_factory=list)
    zero_info_frac: list[float] = field(default_factory=list)
    absorbed: list[tuple[int, float]] = field(default_factory=list)
    """(step, learning/absorbed_bits) at each probe measurement."""
    final: dict[str, float] = field(default_factory=dict)
    rank: int = 8
    bits_to_learn: float | None = 0.0
    seconds: float = 0.0
    output_dir: str = ""
    task: str = "the codebook task"
    kl_budget: float | None = None
    budget_crossed: tuple[int, float] | None = None
    """(step, measured KL) of the first measurement over ``kl_budget``, or None."""
    clipped_ratio: float | None = None
    """TRL's ``completions/clipped_ratio`` at the last step: 1.0 means no completion ended with <eos>."""
    planned_steps: int = 0
    stopped: bool = False
    """The run ended before ``planned_steps`` (a budget with ``on_budget="stop"`` or a plugin stopped it)."""
    train_seconds: float | None = None
    """Training alone (transformers' ``train_runtime``); ``seconds`` includes setup (model, trainer, callback)."""
    events: list[str] = field(default_factory=list)
    """The run's events in words (``lora_rl_plugins.report.events.run_events``): what the report opens with."""


#: The demo measures the KL every 10 generation batches on every sequence, more than the library's defaults
#: (``kl.monitor.DEFAULT_KL_EVERY``, ``DEFAULT_MAX_SEQUENCES``): a short showcase run is worth a denser, whole-batch
#: KL curve.
DEMO_KL_EVERY = 10
DEMO_KL_MAX_SEQUENCES = 4096


def run_demo(
    *,
    steps: int | None = None,
    rank: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    output_dir: str | None = None,
    progress: bool = True,
    kl_budget: float | None = DEMO_KL_BUDGET,
    callback_options: dict[str, Any] | None = None,
    setup: DemoSetup | None = None,
) -> DemoResult:
    """Train with GRPO + LoRA and the ``LoraRLCallback``; return what it logged.

    ``setup`` is the model, tokenizer and task (default: ``tiny_setup(seed)``, the tiny model on the
    codebook task); ``steps``, ``rank`` and ``learning_rate`` default to the setup's (300, 8, 2e-3 for
    the tiny model).

    ``kl_budget`` (nats/token, None for none) is the KL monitor's budget: the default demo drifts past
    it (the KL-free policy stops emitting <eos>), and the monitor's ``KLBudgetWarning`` says so.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    started = time.perf_counter()
    setup = setup or tiny_setup(seed)
    task = setup.task
    steps, rank = steps or setup.default_steps, rank or setup.default_rank
    trainer = _demo_trainer(setup, steps, rank, learning_rate, seed, output_dir)
    args = trainer.args
    options = {
        "kl_every": DEMO_KL_EVERY,
        "kl_max_sequences": DEMO_KL_MAX_SEQUENCES,
        **setup.callback_options,
        **(callback_options or {}),
    }
    if kl_budget is not None:
        options.setdefault("kl_budget", kl_budget)
    callback = LoraRLCallback(trainer, **options)
    trainer.add_callback(callback)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # one log dict per step would bury the summary
    if progress:
        trainer.add_callback(_ProgressBar(callback))
    with _library_warnings_on_their_own_line():
        trainer.train()
    trainer.save_state()  # trainer_state.json: what `lora-rl report` reads
    result = DemoResult(
        rank=rank,
        bits_to_learn=task.bits_to_learn,
        output_dir=args.output_dir,
        task=setup.description,
        kl_budget=options.get("kl_budget"),
    )
    _read_history(result, trainer.state.log_history)
    result.planned_steps, result.stopped = steps, trainer.state.global_step < steps
    result.seconds = time.perf_counter() - started
    return result


def _demo_trainer(
    setup: DemoSetup, steps: int, rank: int, learning_rate: float | None, seed: int, output_dir: str | None
) -> Any:
    """The demo's ``GRPOTrainer``: the setup's model, tokenizer and task, a LoRA of rank ``rank`` on every linear."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer, task = setup.model, setup.tokenizer, setup.task
    settings = dict(
        output_dir=output_dir or tempfile.mkdtemp(prefix="lora-rl-demo-"),
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=2,
        learning_rate=2e-3,  # the tiny model's settings; setup.grpo overrides them
        lr_scheduler_type="linear",
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=seed,
        disable_tqdm=True,  # the demo draws its own one-line bar below
    )
    settings.update(setup.grpo)
    if learning_rate is not None:
        settings["learning_rate"] = learning_rate
    args = GRPOConfig(**settings)
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=task.reward,
        args=args,
        train_dataset=task.dataset(steps * args.generation_batch_size // args.num_generations, seed=seed),
        peft_config=LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    return trainer


def _read_history(result: DemoResult, history: list[dict[str, Any]]) -> None:
    """Fill ``result``'s curves and latest values from TRL's ``log_history``."""
    for entry in history:
        if "completions/clipped_ratio" in entry:
            result.clipped_ratio = float(entry["completions/clipped_ratio"])
        if "reward" in entry and "bandwidth/bits_step" in entry:
            result.steps.append(int(entry["step"]))
            result.reward.append(float(entry["reward"]))
            result.bits_step.append(float(entry["bandwidth/bits_step"]))
            result.zero_info_frac.append(float(entry.get("bandwidth/zero_info_frac", float("nan"))))
        # the quiet log line publishes an unchanged value once: carry each metric's latest value forward
        result.final.update(
            {k: float(v) for k, v in entry.items() if k.startswith(("bandwidth/", "kl_monitor/", "learning/"))}
        )
        if "learning/absorbed_bits" in entry and entry.get("learning/probe_step") == entry.get("step"):
            result.absorbed.append((int(entry["step"]), float(entry["learning/absorbed_bits"])))
        if "train_runtime" in entry:  # transformers' end-of-training entry: training alone, setup excluded
            result.train_seconds = float(entry["train_runtime"])
    # The events in words: the same function (and list) the report opens with.
    from ..report.events import run_events
    from ..report.runlog import trl_history

    events = run_events(trl_history(history), kl_budget=result.kl_budget)
    result.events = [event.text for event in events]
    crossed = next((event for event in events if event.kind == "kl_budget"), None)
    result.budget_crossed = (crossed.step, crossed.value) if crossed else None  # type: ignore[assignment]


@contextlib.contextmanager
def _library_warnings_on_their_own_line() -> Iterator[None]:
    """Print this library's warnings (the KL budget's included) as one clear line above the progress bar;
    every other warning is shown as Python would show it."""
    original = warnings.showwarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None):
        if category.__module__.startswith("lora_rl_plugins"):
            from tqdm.auto import tqdm

            tqdm.write(f"\n  {category.__name__}: {message}\n", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


class _ProgressBar:
    """A tqdm bar over the steps whose postfix is the reward and the run session's short postfix."""

    def __new__(cls, callback: Any) -> Any:
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        class ProgressBar(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.bar = tqdm(total=state.max_steps, desc="GRPO", unit="step", dynamic_ncols=True)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and "reward" in logs:
                    self.bar.set_postfix_str(f"reward {logs['reward']:.2f} | {callback.session.postfix()}")

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.bar.update(state.global_step - self.bar.n)

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.bar.close()

        return ProgressBar()


def _trend(values: list[float], spec: str) -> str:
    """Mean of the first tenth of ``values`` -> mean of the last tenth."""
    if not values:
        return "n/a"
    window = max(1, len(values) // 10)
    first, last = values[:window], values[-window:]
    return f"{sum(first) / len(first):{spec}} -> {sum(last) / len(last):{spec}}"


def format_summary(result: DemoResult, width: int | None = None) -> str:
    """A readable report of the demo run, wrapped to ``width`` columns (default: the terminal's,
    ``shutil.get_terminal_size``, 100 when it is unknown)."""
    import shutil

    width = width or shutil.get_terminal_size((100, 24)).columns
    final = result.final
    timing = f"in {result.seconds:.0f} s"
    if result.train_seconds is not None:  # training apart from setup (model, trainer, callback)
        timing = (
            f"training {result.train_seconds:.0f} s (+ {max(result.seconds - result.train_seconds, 0):.0f} s setup)"
        )
    lines = [
        "",
        f"lora-rl demo: GRPO + LoRA r={result.rank} on {result.task}, {len(result.steps)} steps, {timing}",
        "",
        f"  reward          {_trend(result.reward, '.2f')}   {sparkline(result.reward, low=0.0, high=1.0)}",
        f"  signal per step {_trend(result.bits_step, '.1f')}   {sparkline(result.bits_step, low=0.0)}   "
        "(bits, estimate: what the rewards could distinguish)",
        f"  zero-info groups {_trend(result.zero_info_frac, '.0%')}   "
        "(groups with all-zero advantages: they teach nothing)",
        "",
        "  the chain, in bits (bound >= signal >= absorbed <= what there was to learn):",
        f"    bound         {final.get('bandwidth/bound_total', 0):,.0f}   structural bound on the reward stream",
        f"    signal        {final.get('bandwidth/bits_total', 0):,.0f}   (estimate) summed over steps: a lesson "
        "repeated is counted again",
    ]
    if "learning/absorbed_bits" in final:
        curve = [bits for _, bits in result.absorbed]
        uniform = f" ({result.bits_to_learn:.1f} bits if it were uniform)" if result.bits_to_learn is not None else ""
        lines += [
            f"    absorbed      {final['learning/absorbed_bits']:.1f}   (exact) Σ log2 π(answer|probe) − "
            f"log2 π_base(answer|probe) over the probe set   "
            f"{sparkline(curve, low=0.0, high=final['learning/answer_bits'])}",
            f"    to learn      {final['learning/answer_bits']:.1f}   (exact) Σ −log2 π_base(answer|probe): the "
            f"answers under the base model{uniform}",
        ]
    elif result.bits_to_learn is not None:
        lines.append(f"    to learn      {result.bits_to_learn:.1f}   what the task holds (uniform answers)")
    if "learning/prompts_seen" in final:
        lines.append(
            f"  prompts         {final.get('learning/solved_frac', 0):.0%} solved, "
            f"{final.get('learning/informative_frac', 0):.0%} informative, "
            f"{final.get('learning/unsolved_frac', 0):.0%} unsolved "
            f"(of {final['learning/prompts_seen']:.0f} seen, at their latest visit)"
        )
    if "bandwidth/capacity_bits" in final:
        lines.append(
            f"  adapter         {final['bandwidth/capacity_bits']:,.0f} bits of capacity at r={result.rank} "
            f"(32 bits/parameter); the signal fills {format_percent(final['bandwidth/capacity_used'])} of it"
        )
        lines += [f"  {'rank advice' if i == 0 else '':<15} {line}" for i, line in enumerate(_advice(result).lines)]
    if "kl_monitor/kl_mean" in final:
        lines.append(
            f"  policy drift    KL(policy || base) {final['kl_monitor/kl_mean']:.2f} nats/token at step "
            f"{int(final['kl_monitor/measured_step'])} (exact, measured every 10 batches; no KL penalty was used)"
        )
    lines += _budget_lines(result)
    lines += [f"  {'events' if i == 0 else '':<15} {event}" for i, event in enumerate(result.events)]
    # two lines, so that the command is never wrapped (it is meant to be copied)
    lines += [
        "",
        f"  the run's logs are in {result.output_dir}; to draw them:",
        f"    lora-rl report {result.output_dir}",
    ]
    return "\n".join(_fit(lines, width))


def _advice(result: DemoResult):  # -> RankAdvice
    """The rank advice for the run (``planning.rank.advise_rank``): what limits it, from its own numbers."""
    from ..planning.rank import advise_rank

    final = result.final
    window = max(1, len(result.reward) // 10)
    first = sum(result.reward[:window]) / window if result.reward else None
    last = sum(result.reward[-window:]) / window if result.reward else None
    return advise_rank(
        rank=result.rank,
        capacity_bits=final["bandwidth/capacity_bits"],
        signal_bits=final["bandwidth/projected_bits"],
        rank_sufficient=int(final["bandwidth/rank_sufficient"]),
        reward_first=first,
        reward_last=last,
        absorbed_bits=final.get("learning/absorbed_bits"),
        steps=result.steps[-1] if result.steps else None,
    )


def _fit(lines: list[str], width: int) -> list[str]:
    """Each line wrapped to ``width`` columns, continuation lines indented to the line's value column (after its
    label), so that the summary reads in a terminal of that width; sparklines are never split."""
    import re
    import textwrap

    fitted = []
    for line in lines:
        if len(line) <= width:
            fitted.append(line)
            continue
        label = re.match(r"^( +\S(?:\S| (?! ))*\s{2,}|\s+)", line)
        indent = " " * min(len(label.group(1)) if label else 0, width // 3)
        fitted += textwrap.wrap(
            line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
        ) or [line]
    return fitted


def _budget_lines(result: DemoResult) -> list[str]:
    """The guard rail's verdict: the KL budget held, or crossed at which step and what to do."""
    if result.kl_budget is None:
        return []
    if result.budget_crossed is None:
        return [f"  KL budget       {result.kl_budget:g} nats/token: held"]
    step, _ = result.budget_crossed  # the crossing's sentence is among the events below
    return [
        f"  KL budget       {result.kl_budget:g} nats/token: CROSSED at step {step} (the KLBudgetWarning above: the "
        "guard rail). To hold the policy near its base: on_budget='penalize' (a KL penalty from then on) or "
        "'stop', a lower learning rate, or a reward for ending the answer; `lora-rl demo --kl-budget 0` turns "
        "the budget off",
    ]
