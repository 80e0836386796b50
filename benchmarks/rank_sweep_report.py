"""What the rank sweep's runs say: per-rank means and spreads, the seed claims as measured, the table and the figure.

    python -m benchmarks.rank_sweep_report [benchmarks/results/rank_sweep.json]

Reads the runs ``python -m benchmarks.rank_sweep`` wrote and rewrites, in the same file, what is derived from
them (``summary``, ``claims``, ``kl_free_vs_beta``, ``markdown``) and the figure beside it (``rank_sweep.png``);
the runs and the stamp are left as measured. Derived only: re-running it changes no measurement, so it is not
among the code the result's stamp measures.

Spreads: over seeds, the standard error of the mean (sample sd / √n); one seed: that run's eval standard error.
"Within noise" of the best: a difference of at most 2 standard errors of the difference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

from .common import markdown_table

RESULT = Path(__file__).resolve().parent / "results" / "rank_sweep.json"


def _se(values: list[float], fallback: float = math.nan) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else fallback


def per_rank(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per rank, over the KL-free runs (one per seed)."""
    ranks: dict[int, dict[str, Any]] = {}
    for rank in sorted({r["spec"]["rank"] for r in runs}):
        mine = [r for r in runs if r["spec"]["rank"] == rank and r["spec"]["beta"] == 0]
        if not mine:
            continue
        after = [r["eval_after"]["mean"] for r in mine]
        kl = [r["final_kl_mean"] for r in mine]
        before = [r["eval_before"]["mean"] for r in mine if r.get("eval_before")]
        ranks[rank] = {
            "seeds": [r["spec"]["seed"] for r in mine],
            "eval_before_mean": statistics.fmean(before) if before else math.nan,
            "eval_after": after,
            "eval_after_mean": statistics.fmean(after),
            "eval_after_se": _se(after, mine[0]["eval_after"]["stderr"]),
            "final_kl": kl,
            "final_kl_mean": statistics.fmean(kl),
            "final_kl_se": _se(kl),
            "bits_total_mean": statistics.fmean(r["bits_total"] for r in mine),
            "absorbed_bits_mean": statistics.fmean(r.get("absorbed_bits", math.nan) for r in mine),
            "answer_bits": mine[0].get("answer_bits", math.nan),
            "plateau_rise_max": max(r.get("plateau", {}).get("rise", math.nan) for r in mine),
            "capacity_bits": mine[0]["capacity_bits"],
            "advised_rank_plan": mine[0]["advised_rank_plan"],
            "rank_holding_measured_bits": max(r["rank_holding_measured_bits"] for r in mine),
            "step_seconds_median": statistics.median(r["step_seconds_median"] for r in mine),
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in mine),
        }
    return ranks


def claims(ranks: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The seed claims, each with what was measured and whether it held here."""
    if not ranks:
        return {}
    best = max(ranks, key=lambda r: ranks[r]["eval_after_mean"])

    def within(rank: int) -> bool:
        gap = ranks[best]["eval_after_mean"] - ranks[rank]["eval_after_mean"]
        return gap <= 2 * math.hypot(ranks[best]["eval_after_se"], ranks[rank]["eval_after_se"])

    ordered = sorted(ranks)
    smallest_within = next(r for r in ordered if within(r))
    kls = [ranks[r]["final_kl_mean"] for r in ordered]
    low, high = ordered[0], ordered[-1]
    kl_gap = ranks[high]["final_kl_mean"] - ranks[low]["final_kl_mean"]
    kl_noise = 2 * math.hypot(ranks[high]["final_kl_se"], ranks[low]["final_kl_se"])
    return {
        "best_rank": best,
        "smallest_within_noise": smallest_within,
        "small_rank_matches_larger": {
            "held": within(low),
            "detail": f"r={low}: {ranks[low]['eval_after_mean']:.3f} ± {ranks[low]['eval_after_se']:.3f} against the "
            f"best, r={best}: {ranks[best]['eval_after_mean']:.3f} ± {ranks[best]['eval_after_se']:.3f}",
        },
        "kl_grows_with_rank": {
            "held": all(a < b for a, b in itertools.pairwise(kls)) and kl_gap > kl_noise,
            "monotone": all(a < b for a, b in itertools.pairwise(kls)),
            "largest_minus_smallest": kl_gap,
            "noise_2se": kl_noise,
            "detail": ", ".join(
                f"r={r}: {ranks[r]['final_kl_mean']:.3f} ± {ranks[r]['final_kl_se']:.3f}" for r in ordered
            )
            + " nats/token",
        },
        "advice": {
            "advised_rank": ranks[low]["advised_rank_plan"],
            "smallest_within_noise": smallest_within,
            "held": smallest_within <= ranks[low]["advised_rank_plan"] or within(ranks[low]["advised_rank_plan"])
            if ranks[low]["advised_rank_plan"] in ranks
            else None,
        },
    }


def compare_beta(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The beta > 0 run beside its KL-free twin (same rank and seed, run side by side)."""
    penalised = next((r for r in runs if r["spec"]["beta"] > 0), None)
    if penalised is None:
        return None
    twin = next(
        (
            r
            for r in runs
            if r["spec"]["beta"] == 0
            and r["spec"]["rank"] == penalised["spec"]["rank"]
            and r["spec"]["seed"] == penalised["spec"]["seed"]
        ),
        None,
    )
    if twin is None:
        return None
    difference = twin["eval_after"]["mean"] - penalised["eval_after"]["mean"]
    noise = 2 * math.hypot(twin["eval_after"]["stderr"], penalised["eval_after"]["stderr"])
    return {
        "rank": twin["spec"]["rank"],
        "seed": twin["spec"]["seed"],
        "beta": penalised["spec"]["beta"],
        "step_seconds": {"beta": penalised["step_seconds_median"], "kl_free": twin["step_seconds_median"]},
        "time_ratio": twin["step_seconds_median"] / penalised["step_seconds_median"],
        "peak_rss_mib": {"beta": penalised["peak_rss_mib"], "kl_free": twin["peak_rss_mib"]},
        "eval_after": {"beta": penalised["eval_after"], "kl_free": twin["eval_after"]},
        "final_kl_mean": {"beta": penalised["final_kl_mean"], "kl_free": twin["final_kl_mean"]},
        "claim_kl_free_keeps_accuracy": {"held": difference >= -noise, "difference": difference, "noise_2se": noise},
        "claim_kl_free_saves_time": {"held": twin["step_seconds_median"] < penalised["step_seconds_median"]},
    }


def tables(ranks: dict[int, dict[str, Any]], beta: dict[str, Any] | None) -> str:
    rows = [
        [
            rank,
            len(s["seeds"]),
            f"{s['eval_before_mean']:.3f}",
            f"{s['eval_after_mean']:.3f} ± {s['eval_after_se']:.3f}",
            f"{s['final_kl_mean']:.3f} ± {s['final_kl_se']:.3f}",
            f"{s['bits_total_mean']:.1f}",
            f"{s['absorbed_bits_mean']:.0f} of {s['answer_bits']:.0f}",
            f"{s['plateau_rise_max']:+.3f}",
            f"{s['capacity_bits']:.3g}",
            s["advised_rank_plan"],
            f"{s['step_seconds_median']:.1f}",
        ]
        for rank, s in ranks.items()
    ]
    text = markdown_table(
        [
            "rank",
            "seeds",
            "eval reward before",
            "eval reward after (± se over seeds)",
            "KL from base after (nats/token, exact; ± se)",
            "signal bits (estimate)",
            "absorbed bits of the bare answer (exact)",
            "reward rise, last quarter (max over seeds)",
            "capacity bits",
            "advised r",
            "s/step (median)",
        ],
        rows,
    )
    if beta:
        text += "\n\n" + markdown_table(
            [
                f"rank {beta['rank']}, seed {beta['seed']}",
                "s/step",
                "peak MiB",
                "eval reward after (± se)",
                "KL from base",
            ],
            [
                [
                    f"β = {beta['beta']}" if key == "beta" else "KL-free (β = 0)",
                    f"{beta['step_seconds'][key]:.1f}",
                    f"{beta['peak_rss_mib'][key]:.0f}",
                    f"{beta['eval_after'][key]['mean']:.3f} ± {beta['eval_after'][key]['stderr']:.3f}",
                    f"{beta['final_kl_mean'][key]:.3f}",
                ]
                for key in ("beta", "kl_free")
            ],
        )
    return text


def _smooth(values: list[float], width: int = 5) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def figure(runs: list[dict[str, Any]], ranks: dict[int, dict[str, Any]], path: Path) -> bool:
    """Three panels: training reward over steps (mean over seeds, 5-step moving average), eval reward after
    training against rank (± se), and the exact KL from the base against rank (each seed, and the mean)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(13.5, 4.2), dpi=100)
    curve_axis, eval_axis, kl_axis = fig.subplots(1, 3)
    for rank in ranks:
        mine = [r for r in runs if r["spec"]["rank"] == rank and r["spec"]["beta"] == 0]
        steps = mine[0]["curve"]["step"]
        length = min(len(r["curve"]["reward"]) for r in mine)
        mean = [statistics.fmean(r["curve"]["reward"][i] for r in mine) for i in range(length)]
        curve_axis.plot(steps[:length], _smooth(mean), label=f"r={rank}")
    for run in runs:
        if run["spec"]["beta"] > 0:
            curve_axis.plot(
                run["curve"]["step"],
                _smooth(run["curve"]["reward"]),
                "k--",
                label=f"r={run['spec']['rank']}, β={run['spec']['beta']} (seed {run['spec']['seed']})",
            )
    curve_axis.set(xlabel="optimizer step", ylabel="training reward (batch mean, 5-step average)")
    curve_axis.set_title("Training reward, mean over seeds", fontsize=11)
    curve_axis.legend(fontsize=9)
    ordered = list(ranks)
    eval_axis.errorbar(
        ordered, [ranks[r]["eval_after_mean"] for r in ordered], yerr=[ranks[r]["eval_after_se"] for r in ordered],
        marker="o", capsize=4, label="after training (± se over seeds)",
    )  # fmt: skip
    eval_axis.axhline(
        statistics.fmean(ranks[r]["eval_before_mean"] for r in ordered), color="grey", ls=":", label="before"
    )
    eval_axis.set(xscale="log", xlabel="LoRA rank r", ylabel="eval reward (held-out prompts)")
    eval_axis.set_title("Eval reward after training", fontsize=11)
    eval_axis.legend(fontsize=9)
    for rank in ordered:
        kl_axis.scatter([rank] * len(ranks[rank]["final_kl"]), ranks[rank]["final_kl"], color="C0", alpha=0.5, s=18)
    kl_axis.plot(ordered, [ranks[r]["final_kl_mean"] for r in ordered], "o-", color="C1", label="mean over seeds")
    kl_axis.set(xscale="log", xlabel="LoRA rank r", ylabel="KL(π_θ‖π_base), nats/token (exact)")
    kl_axis.set_title("Drift from the base after training", fontsize=11)
    kl_axis.legend(fontsize=9)
    for axis in (eval_axis, kl_axis):  # the ranks themselves on the axis
        axis.set_xticks(ordered, [str(r) for r in ordered])
        axis.minorticks_off()
    for axis in (curve_axis, eval_axis, kl_axis):
        axis.tick_params(labelsize=9)
        axis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def report(path: Path = RESULT) -> dict[str, Any]:
    data = json.loads(path.read_text())
    runs = data["runs"]
    ranks = per_rank(runs)
    data["summary"] = {"per_rank": {str(k): v for k, v in ranks.items()}, **claims(ranks)}
    data["kl_free_vs_beta"] = compare_beta(runs)
    data["markdown"] = tables(ranks, data["kl_free_vs_beta"])
    png = path.with_suffix(".png")
    data["figure"] = str(png.relative_to(path.parents[2])) if figure(runs, ranks, png) else None
    path.write_text(json.dumps(data, indent=2, default=str))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", nargs="?", default=str(RESULT))
    data = report(Path(parser.parse_args().result))
    print(data["markdown"])
    print(json.dumps({k: v for k, v in data["summary"].items() if k != "per_rank"}, indent=2))


if __name__ == "__main__":
    main()
