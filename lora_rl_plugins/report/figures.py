"""The report's figures (matplotlib, Agg backend, deterministic for the same input)."""

from __future__ import annotations

from typing import Any

from .runlog import RunLog

__all__ = ["build_figures", "capacity_ranks"]

KL_SERIES = (
    ("kl_monitor/kl_mean", "KL(π_θ‖π_ref), mean per token (exact)", "-", "o"),
    ("kl_monitor/kl_max", "KL, max per token (exact)", "--", None),
    ("kl_monitor/k3_mean", "k3 estimate (TRL's estimator)", ":", None),
    ("kl_monitor/certificate", "certificate (max δ − min δ)²/8 (bound)", "-.", None),
    ("kl_monitor/bound", "single-layer bound (γ‖BA‖₂)²H²/(4T²)", (0, (1, 1)), None),
)


def capacity_ranks(run: RunLog) -> dict[int, float]:
    """Capacity (bits) at the run's rank and neighbouring ranks, scaled uniformly: C(r') = C · r'/r."""
    capacity, rank = run.last("bandwidth/capacity_bits"), run.last("bandwidth/adapter_rank")
    if not capacity or not rank:
        return {}
    rank = int(rank)
    sufficient = int(run.last("bandwidth/rank_sufficient") or 1)
    ranks = sorted({max(1, rank // 4), max(1, rank // 2), rank, 2 * rank, sufficient})
    return {r: capacity * r / rank for r in ranks}


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _noisy(axis: Any, steps: list[int], values: list[float], label: str, **style: Any) -> None:
    """Raw values faint, a moving average over a twentieth of the run on top."""
    window = max(1, len(values) // 20)
    if window > 1:
        axis.plot(steps, values, alpha=0.25, linewidth=0.8, **style)
        axis.plot(steps, _smooth(values, window), label=f"{label}, moving average of {window}", **style)
    else:
        axis.plot(steps, values, label=label, **style)


def _figure(title: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    axis.set_title(title, fontsize=11)
    axis.grid(True, alpha=0.3)
    axis.set_xlabel("optimizer step")
    return figure, axis


def build_figures(run: RunLog) -> dict[str, Any]:
    """name -> matplotlib Figure, for the series the run has."""
    figures: dict[str, Any] = {}
    if run.series.get("bandwidth/bits_total"):
        figure, axis = _figure("Signal the rewards carried vs adapter capacity")
        axis.plot(
            run.steps("bandwidth/bits_total"),
            run.values("bandwidth/bits_total"),
            label="signal, summed over steps (estimate)",
        )
        axis.plot(
            run.steps("bandwidth/bound_total"),
            run.values("bandwidth/bound_total"),
            "--",
            label="upper bound on the signal",
        )
        rank = run.last("bandwidth/adapter_rank")
        for r, capacity in capacity_ranks(run).items():
            style = "-" if rank and r == int(rank) else ":"
            axis.axhline(
                capacity,
                color="grey",
                linestyle=style,
                linewidth=1.2 if style == "-" else 0.8,
                label=f"capacity at r={r}" + (" (this run)" if style == "-" else ""),
            )
        axis.set_yscale("log")
        axis.set_ylabel("bits")
        axis.legend(fontsize=7, loc="lower right")
        figures["bits"] = figure
    if run.series.get("bandwidth/bits_step"):
        figure, axis = _figure("Signal per step and zero-information groups")
        steps = run.steps("bandwidth/bits_step")
        _noisy(axis, steps, run.values("bandwidth/bits_step"), "signal per step (estimate)", color="tab:blue")
        if run.series.get("bandwidth/bound_step"):
            bound = run.values("bandwidth/bound_step")
            _noisy(axis, run.steps("bandwidth/bound_step"), bound, "bound per step", color="tab:orange", linestyle="--")
        axis.set_ylabel("bits")
        if run.series.get("bandwidth/zero_info_frac"):
            twin = axis.twinx()
            zero = run.values("bandwidth/zero_info_frac")
            _noisy(twin, run.steps("bandwidth/zero_info_frac"), zero, "zero-information groups", color="tab:red")
            twin.set_ylim(0, 1.05)
            twin.set_ylabel("fraction of groups")
            twin.legend(fontsize=7, loc="upper right")
        axis.legend(fontsize=7, loc="upper left")
        figures["per_step"] = figure
    if run.series.get("reward"):
        figure, axis = _figure("Reward")
        _noisy(axis, run.steps("reward"), run.values("reward"), "mean reward", color="tab:green")
        axis.set_ylabel("reward")
        axis.legend(fontsize=7)
        figures["reward"] = figure
    if run.series.get("kl_monitor/kl_mean"):
        figure, axis = _figure("Policy drift: measured KL, bounds and budget")
        positive = True
        for name, label, style, marker in KL_SERIES:
            if run.series.get(name):
                axis.plot(run.steps(name), run.values(name), linestyle=style, marker=marker, markersize=3, label=label)
                positive = positive and all(v > 0 for v in run.values(name))
        if (budget := run.last("kl_monitor/budget")) is not None:
            axis.axhline(budget, color="tab:red", linewidth=1.2, label=f"budget {budget:g}")
        if positive:
            axis.set_yscale("log")
        axis.set_ylabel("nats per token")
        axis.legend(fontsize=7)
        figures["kl"] = figure
    if (ledger := ledger_figure(run)) is not None:
        figures["ledger"] = ledger
    return figures


LEDGER_SERIES = (
    ("learning/solved_frac", "solved (all rollouts at the top reward)", "tab:green"),
    ("learning/informative_frac", "informative (unequal rewards)", "tab:blue"),
    ("learning/unsolved_frac", "unsolved (all at the bottom)", "tab:red"),
)


def ledger_figure(run: RunLog) -> Any | None:
    """The per-prompt ledger over the run: fractions of the prompts seen that are solved, informative and
    unsolved at their latest visit, stacked (the rest: constant at an intermediate reward). None without a ledger."""
    if not all(run.series.get(name) for name, _, _ in LEDGER_SERIES):
        return None
    figure, axis = _figure("Prompts seen: solved, informative, unsolved")
    steps = run.steps(LEDGER_SERIES[0][0])
    values = [run.values(name)[: len(steps)] for name, _, _ in LEDGER_SERIES]
    axis.stackplot(
        steps[: min(map(len, values))],
        *[v[: min(map(len, values))] for v in values],
        labels=[label for _, label, _ in LEDGER_SERIES],
        colors=[color for _, _, color in LEDGER_SERIES],
        alpha=0.75,
    )
    axis.set_ylim(0, 1)
    axis.set_ylabel("fraction of prompts seen")
    axis.legend(fontsize=7, loc="upper left")
    return figure
