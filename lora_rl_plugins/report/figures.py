"""The report's figures (matplotlib's object API: ``Figure`` objects, no pyplot state, the caller's backend left
alone; deterministic for the same input)."""

from __future__ import annotations

from typing import Any

from .runlog import RunLog

__all__ = ["build_figures", "capacity_ranks", "describe_figures", "ledger_figure", "measurements"]

#: The smallest text in a figure (points): legends, labels, ticks; readable at normal zoom.
FONT = 9

#: Series of the KL figure's left panel: the mean per token and what bounds it.
KL_MEAN_SERIES = (
    ("kl_monitor/kl_mean", "exact KL(π_θ‖π_ref), mean per token (the budget applies to this)", "-", "o", "tab:blue"),
    (
        "kl_monitor/k3_mean",
        "k3: TRL's sampled estimate of the KL (its `kl`), not the exact KL",
        ":",
        "x",
        "tab:green",
    ),
    (
        "kl_monitor/certificate",
        "certificate (max δ − min δ)²/8, δ = log-prob shift: bounds the mean",
        "--",
        None,
        "tab:orange",
    ),
)
#: Series of the right panel: the largest per-token KL and the bound on every token's KL.
KL_MAX_SERIES = (
    ("kl_monitor/kl_max", "KL, largest per token (exact)", "-", "o", "tab:purple"),
    ("kl_monitor/bound", "single-layer bound (γ‖BA‖₂)²H²/(4T²): bounds every token", "--", None, "tab:brown"),
)


def measurements(run: RunLog, name: str) -> tuple[list[int], list[float]]:
    """A KL series at the steps it was measured (one point per measurement, not per log).

    The monitor reports its latest measurement at every log; ``kl_monitor/measured_step`` says which
    step that measurement was taken at. Without it, the logged points are returned as they are.
    """
    points = run.series.get(name, [])
    measured = dict(run.series.get("kl_monitor/measured_step", []))
    if not measured:
        return [s for s, _ in points], [v for _, v in points]
    by_measurement: dict[int, float] = {}
    for step, value in points:
        at = measured.get(step)
        by_measurement[int(at) if at is not None else step] = value
    ordered = sorted(by_measurement.items())
    return [s for s, _ in ordered], [v for _, v in ordered]


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


def smoothing_window(count: int) -> int:
    """The moving-average window over ``count`` points (a twentieth of the run); 1 means no smoothing, and then no
    faint raw line is drawn (captions say "faint" only when this is > 1)."""
    return max(1, count // 20)


def _noisy(axis: Any, steps: list[int], values: list[float], label: str, **style: Any) -> None:
    """Raw values faint, a moving average over a twentieth of the run on top (raw values alone when short)."""
    window = smoothing_window(len(values))
    if window > 1:
        axis.plot(steps, values, alpha=0.25, linewidth=0.8, **style)
        axis.plot(steps, _smooth(values, window), label=f"{label}, moving average of {window}", **style)
    else:
        axis.plot(steps, values, label=label, **style)


def _figure(title: str) -> tuple[Any, Any]:
    # matplotlib's object API: no pyplot state (no figure kept open, the user's backend left alone)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.6), dpi=100)
    axis = figure.subplots()
    axis.set_title(title, fontsize=FONT + 2)
    axis.tick_params(labelsize=FONT)
    axis.grid(True, alpha=0.3)
    axis.set_xlabel("optimizer step")
    return figure, axis


def _legend_below(axis: Any, columns: int = 2, **kwargs: Any) -> None:
    """The legend under the axis, outside the data."""
    axis.legend(fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=columns, frameon=False, **kwargs)


#: Capacity lines, smallest rank first: distinct from each other and from the bits series (blue, orange).
CAPACITY_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _capacity_colors(ranks: list[int], this_rank: int | None) -> list[str]:
    others = iter(CAPACITY_COLORS * (1 + len(ranks) // len(CAPACITY_COLORS)))
    return ["black" if r == this_rank else next(others) for r in ranks]


def _positive(steps: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    kept = [(s, v) for s, v in zip(steps, values, strict=True) if v > 0]
    return [s for s, _ in kept], [v for _, v in kept]


def build_figures(run: RunLog) -> dict[str, Any]:
    """name -> matplotlib Figure, for the series the run has (captions: ``describe_figures``)."""
    figures: dict[str, Any] = {}
    if run.series.get("bandwidth/bits_total"):
        figure, axis = _figure("Signal the rewards carried vs adapter capacity")
        axis.plot(
            *run.through_end("bandwidth/bits_total"),
            color="tab:blue",
            linewidth=2,
            label="signal, summed over steps (estimate)",
        )
        axis.plot(
            *run.through_end("bandwidth/bound_total"),
            "--",
            color="tab:orange",
            linewidth=1.5,
            label="upper bound on the signal",
        )
        handles = list(axis.get_lines())
        rank = run.last("bandwidth/adapter_rank")
        ranks = capacity_ranks(run)
        colors = _capacity_colors(list(ranks), int(rank) if rank else None)
        for (r, capacity), color in zip(ranks.items(), colors, strict=True):
            this_run = bool(rank) and r == int(rank)  # type: ignore[arg-type]
            axis.axhline(
                capacity,
                color=color,
                linestyle="-" if this_run else (0, (6, 2)),
                linewidth=2.4 if this_run else 1.8,
                label=f"capacity at r={r}" + (" (this run)" if this_run else ""),
            )
            axis.annotate(  # labelled at its right end, outside the data
                f"r={r}" + (" (this run)" if this_run else ""),
                xy=(1.0, capacity),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=FONT,
                color=color,
                fontweight="bold" if this_run else "normal",
            )
        axis.set_yscale("log")
        axis.set_ylabel("bits (log scale)")
        _legend_below(axis, handles=handles)
        figures["bits"] = figure
    if run.series.get("bandwidth/bits_step"):  # one quantity per axis: bits here, the fraction of groups below
        figure, axis = _figure("Signal per step")
        steps = run.steps("bandwidth/bits_step")
        _noisy(axis, steps, run.values("bandwidth/bits_step"), "signal per step (estimate)", color="tab:blue")
        if run.series.get("bandwidth/bound_step"):
            bound = run.values("bandwidth/bound_step")
            _noisy(axis, run.steps("bandwidth/bound_step"), bound, "bound per step", color="tab:orange", linestyle="--")
        axis.set_ylabel("bits", fontsize=FONT)
        _legend_below(axis)
        figures["per_step"] = figure
    if run.series.get("bandwidth/zero_info_frac"):
        figure, axis = _figure("Zero-information groups")
        zero = run.values("bandwidth/zero_info_frac")
        _noisy(axis, run.steps("bandwidth/zero_info_frac"), zero, "zero-information groups", color="tab:red")
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("fraction of groups", fontsize=FONT)
        _legend_below(axis)
        figures["zero_info"] = figure
    if run.series.get("reward"):
        figure, axis = _figure("Reward")
        _noisy(axis, run.steps("reward"), run.values("reward"), "mean reward", color="tab:green")
        axis.set_ylabel("reward")
        _legend_below(axis)
        figures["reward"] = figure
    if run.series.get("kl_monitor/kl_mean"):
        figures["kl"] = _kl_figure(run)
    if (ledger := ledger_figure(run)) is not None:
        figures["ledger"] = ledger
    return figures


def _kl_figure(run: RunLog) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.5, 5.0), dpi=100)
    mean_axis, max_axis = figure.subplots(1, 2)
    figure.suptitle("Policy drift: measured KL and its bounds", fontsize=11)
    panels = (
        (mean_axis, KL_MEAN_SERIES, "mean per token"),
        (max_axis, KL_MAX_SERIES, "largest per token"),
    )
    for axis, series, title in panels:
        axis.set_title(title, fontsize=FONT + 1)
        axis.grid(True, alpha=0.3)
        axis.set_xlabel("optimizer step")
        for name, label, style, marker, color in series:
            if run.series.get(name):
                # log scale: a measurement of exactly 0 (a fresh adapter) has no place on it (the caption says so)
                steps, values = _positive(*measurements(run, name))
                axis.plot(steps, values, linestyle=style, marker=marker, markersize=3, color=color, label=label)
        if axis is mean_axis and (budget := run.last("kl_monitor/budget")) is not None:
            axis.axhline(budget, color="tab:red", linewidth=1.2, label=f"budget {budget:g} (on the mean)")
        if any(len(line.get_ydata()) for line in axis.get_lines()):
            axis.set_yscale("log")
        axis.set_ylabel("nats per token (log scale)")
        axis.legend(fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    figure.tight_layout()
    return figure


def describe_figures(run: RunLog) -> dict[str, str]:
    """name -> caption, naming only what ``build_figures`` draws for this run."""
    captions: dict[str, str] = {}
    if run.series.get("bandwidth/bits_total"):
        ranks = capacity_ranks(run)
        text = (
            "Cumulative signal (estimate; a rate summed over steps, so a lesson repeated is counted again, not "
            "task information) and its upper bound"
        )
        if ranks:
            listed = ", ".join(f"r={r}" for r in ranks)
            text += (
                f", against the adapter's capacity at this run's rank and neighbouring ranks ({listed}; "
                "uniform rank, each line labelled at its right end)"
            )
        captions["bits"] = text + ". Log scale."
    if run.series.get("bandwidth/bits_step"):
        text = "Signal per optimizer step (bits, estimate)"
        if run.series.get("bandwidth/bound_step"):
            text += " and its bound"
        captions["per_step"] = text + _smoothing(run, "bandwidth/bits_step")
    if run.series.get("bandwidth/zero_info_frac"):
        captions["zero_info"] = (
            "The fraction of groups whose advantages, as the trainer computes them, were all zero (groups of equal "
            "rewards under the default settings), so they teach nothing" + _smoothing(run, "bandwidth/zero_info_frac")
        )
    if run.series.get("reward"):
        captions["reward"] = "Mean reward per step, as the trainer logged it" + _smoothing(run, "reward")
    if run.series.get("kl_monitor/kl_mean"):
        left = ["the exact KL(π_θ‖π_ref) averaged over the measured tokens (the quantity the budget is held to)"]
        if run.series.get("kl_monitor/k3_mean"):
            left.append(
                "k3, TRL's sampled estimate of it (TRL's own `kl`: it can stand above or below the exact value, "
                "and the budget does not apply to it)"
            )
        if run.series.get("kl_monitor/certificate"):
            left.append("the Hoeffding certificate, a bound on that mean")
        if run.last("kl_monitor/budget") is not None:
            left.append("the budget it is held against")
        right = []
        if run.series.get("kl_monitor/kl_max"):
            right.append("the largest per-token KL")
        if run.series.get("kl_monitor/bound"):
            right.append("the single-layer bound of the adapted output layer, which bounds every token's KL")
        text = "Left: " + ", ".join(left) + "."
        if right:
            text += " Right: " + " and ".join(right) + "."
        text += " One point per measurement, at the step it was taken; nats per token, log scale"
        if any(v <= 0 for name in ("kl_monitor/kl_mean", "kl_monitor/kl_max") for v in run.values(name)):
            text += " (measurements of exactly 0, as at the start of a fresh adapter, are not drawn)"
        captions["kl"] = text + "."
    if all(run.series.get(name) for name, _, _ in LEDGER_SERIES):
        captions["ledger"] = (
            "The per-prompt ledger: of the prompts seen so far, the fraction whose latest group was solved, "
            "informative (the trainer's advantages not all zero: GRPO learns from it) or unsolved, stacked. Solved "
            "and unsolved prompts teach nothing."
        )
    return captions


def _smoothing(run: RunLog, name: str) -> str:
    """The caption's end for a series drawn by ``_noisy``: what the faint and solid lines are, only when drawn."""
    window = smoothing_window(len(run.values(name)))
    if window > 1:
        return f". Faint: raw values; solid: moving average of {window} steps."
    return ". One point per logged step (raw values)."


LEDGER_SERIES = (
    ("learning/solved_frac", "solved (all rollouts at the top reward)", "tab:green"),
    ("learning/informative_frac", "informative (advantages not all zero)", "tab:blue"),
    ("learning/unsolved_frac", "unsolved (all at the bottom)", "tab:red"),
)


def ledger_figure(run: RunLog) -> Any | None:
    """The per-prompt ledger over the run: fractions of the prompts seen that are solved, informative and
    unsolved at their latest visit, stacked (the rest: constant at an intermediate reward). None without a ledger."""
    if not all(run.series.get(name) for name, _, _ in LEDGER_SERIES):
        return None
    figure, axis = _figure("Prompts seen: solved, informative, unsolved")
    steps, values = run.aligned([name for name, _, _ in LEDGER_SERIES])
    axis.stackplot(
        steps,
        *values,
        step="post",
        labels=[label for _, label, _ in LEDGER_SERIES],
        colors=[color for _, _, color in LEDGER_SERIES],
        alpha=0.75,
    )
    axis.set_ylim(0, 1)
    axis.set_ylabel("fraction of prompts seen")
    _legend_below(axis, columns=1)
    return figure
