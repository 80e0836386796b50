"""Overhead of each plugin, and of all together, on GRPO step time.

    python -m benchmarks.overhead [--sizes tiny,medium,smollm2] [--steps N] [--repeats 2]

Each configuration runs in a fresh process on the same model, data and seed; configurations are
alternated over two repeats and the fastest (by median step time) is kept. Two views: the
step-time ratio against the run without the callback (on a shared 2-core machine run-to-run jitter
is about ±15 %, far above the effect, so this ratio is noise-dominated), and the time the callback
itself spends per step, measured inside the run around every callback hook and wrapper (plugins
and integration together), as a fraction of the same run's median step: the precise figure (both
numerator and denominator come from the same process, so machine load inflates both). The 1-minute
load average before and after each run is recorded beside it.
"""

from __future__ import annotations

import argparse
import os

from lora_rl_plugins.kl.monitor import DEFAULT_KL_EVERY, DEFAULT_MAX_SEQUENCES

from .common import machine, markdown_table, run_isolated, save_result

#: The code this benchmark measures (git pathspecs): a change to it makes the result stale.
MEASURES = (
    "lora_rl_plugins",
    ":(exclude)lora_rl_plugins/report",
    ":(exclude)lora_rl_plugins/cli.py",
    "benchmarks/common.py",
    "benchmarks/overhead.py",
)

CONFIGS = {
    "no callback": None,
    "bandwidth only": ["kl_monitor", "vllm_serving"],
    f"KL monitor only (every {DEFAULT_KL_EVERY} batches)": ["bandwidth", "vllm_serving"],
    "all plugins": [],
}
#: 3 warm-up steps + whole KL-measurement periods (the window after the warm-up holds exactly 1 measurement per
#: DEFAULT_KL_EVERY steps)
STEPS = {"tiny": 3 + 3 * DEFAULT_KL_EVERY, "medium": 3 + 2 * DEFAULT_KL_EVERY, "smollm2": 3 + DEFAULT_KL_EVERY}
#: TRL's default (``GRPOConfig.logging_steps``): the settings a user who changes nothing runs with. The callback
#: writes its run log at every log, so ``--logging-steps 1`` measures the most it can cost.
LOGGING_STEPS = 10
#: Configurations per model where not all are run: SmolLM2 steps take seconds on a CPU, so only the two ends.
SIZE_CONFIGS = {"smollm2": ["no callback", "all plugins"]}


def measure(
    size: str, steps: int, repeats: int = 2, configs: list[str] | None = None, logging_steps: int = LOGGING_STEPS
) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for label, block in CONFIGS.items():
            if configs is not None and label not in configs:
                continue
            if size in SIZE_CONFIGS and label not in SIZE_CONFIGS[size]:
                continue
            spec = {
                "size": size,
                "peft": True,
                "beta": 0.0,
                "steps": steps,
                "callback": block is not None,
                "callback_options": {"block": block or []},
                "warmup_steps": 3,
                "logging_steps": logging_steps,
            }
            load = os.getloadavg()[0]
            result = run_isolated(spec)
            result["load_average"] = [load, os.getloadavg()[0]]
            if label not in best or result["step_seconds"] < best[label]["step_seconds"]:
                best[label] = result
    return best


def table(results: dict[str, dict[str, dict]]) -> str:
    rows = []
    for size, best in results.items():
        base = best["no callback"]["step_seconds"] if "no callback" in best else float("nan")
        for label, result in best.items():
            step = result["step_seconds"]
            inside = result["callback_ms_per_step"]
            steady = result.get("callback_ms_per_step_steady", inside)
            share = "-" if not result["spec"]["callback"] else f"{inside:.2f} ({inside / 10 / step:.2f} %)"
            steady_share = "-" if not result["spec"]["callback"] else f"{steady:.2f} ({steady / 10 / step:.2f} %)"
            load = "/".join(f"{x:.1f}" for x in result.get("load_average", []))
            rows.append([size, label, f"{step * 1000:.1f}", f"{step / base:.3f}", share, steady_share, load])
    header = [
        "model",
        "configuration",
        "ms/step (median)",
        "ratio to no callback",
        "callback ms/step (% of step), all steps",
        "after the warm-up steps",
        "load avg before/after",
    ]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,medium,smollm2", help="tiny, medium (benchmarks.common) and smollm2")
    parser.add_argument("--steps", type=int, default=None, help=f"steps per run (default {STEPS})")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--logging-steps", type=int, default=LOGGING_STEPS, help="TRL's logging_steps (its default)")
    parser.add_argument("--configs", default=None, help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--out", default="benchmarks/results/overhead.json")
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",")] if args.configs else None
    results = {
        size: measure(size, args.steps or STEPS[size], args.repeats, configs, args.logging_steps)
        for size in args.sizes.split(",")
    }
    report = (
        f"Machine: {machine()}.\n\nSettings: TRL logging every {args.logging_steps} steps; the KL monitor every "
        f"{DEFAULT_KL_EVERY} generation batches on at most {DEFAULT_MAX_SEQUENCES} sequences.\n\n{table(results)}\n"
    )
    print(report)
    save_result(args.out, "overhead", MEASURES, {"machine": machine(), "results": results, "markdown": report})


if __name__ == "__main__":
    main()
