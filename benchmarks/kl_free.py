"""KL-free GRPO versus beta = 0.04, with PEFT and with full fine-tuning; and the KL monitor's cost.

    python -m benchmarks.kl_free [--steps 12] [--size medium]

Every configuration runs in its own fresh process (peak RSS is that run's own) on the same model
and data; the table gives step time and peak memory side by side, as ratios to the beta = 0.04 run
of the same kind, and the monitor's overhead at its default cadence as a ratio to the same KL-free
run without it.
"""

from __future__ import annotations

import argparse

from lora_rl_plugins.kl.monitor import DEFAULT_KL_EVERY

from .common import machine, markdown_table, run_isolated, save_result

#: The code this benchmark measures (git pathspecs): a change to it makes the result stale.
MEASURES = (
    "lora_rl_plugins",
    ":(exclude)lora_rl_plugins/report",
    ":(exclude)lora_rl_plugins/cli.py",
    "benchmarks/common.py",
    "benchmarks/kl_free.py",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--monitor-steps", type=int, default=40, help="steps for the overhead comparison")
    parser.add_argument("--size", default="medium", choices=["tiny", "medium"])
    parser.add_argument("--out", default="benchmarks/results/kl_free.json")
    args = parser.parse_args()

    results = {}
    for kind, peft in (("PEFT (LoRA r=8)", True), ("full fine-tuning", False)):
        for label, beta in (("beta=0.04", 0.04), ("KL-free", 0.0)):
            spec = {"size": args.size, "peft": peft, "beta": beta, "steps": args.steps}
            results[(kind, label)] = run_isolated(spec)
            print(kind, label, f"{results[(kind, label)]['step_seconds']:.3f} s/step", flush=True)
    rows = []
    for kind in ("PEFT (LoRA r=8)", "full fine-tuning"):
        base, free = results[(kind, "beta=0.04")], results[(kind, "KL-free")]
        rows.append(
            [
                kind,
                f"{base['step_seconds']:.3f}",
                f"{free['step_seconds']:.3f}",
                f"{free['step_seconds'] / base['step_seconds']:.2f}",
                f"{base['peak_rss_mib']:.0f}",
                f"{free['peak_rss_mib']:.0f}",
                f"{free['peak_rss_mib'] / base['peak_rss_mib']:.2f}",
            ]
        )
    table = markdown_table(
        [
            "model",
            "s/step β=0.04",
            "s/step KL-free",
            "time ratio",
            "peak MiB β=0.04",
            "peak MiB KL-free",
            "memory ratio",
        ],
        rows,
    )

    # The monitor's cost at its default cadence, on the KL-free PEFT run; alternated to share drift.
    overhead_runs = {"without": [], "with": []}
    for _ in range(2):
        for key, callback in (("without", False), ("with", True)):
            spec = {
                "size": args.size,
                "peft": True,
                "beta": 0.0,
                "steps": args.monitor_steps,
                "callback": callback,
                "callback_options": {"kl_free": True},
            }
            overhead_runs[key].append(run_isolated(spec)["mean_step_seconds"])
    without = min(overhead_runs["without"])
    with_monitor = min(overhead_runs["with"])
    overhead = markdown_table(
        ["KL-free PEFT run", "s/step", "ratio"],
        [
            ["without the callback", f"{without:.3f}", "1.00"],
            [
                f"with the callback (KL monitor every {DEFAULT_KL_EVERY} generation batches, its default)",
                f"{with_monitor:.3f}",
                f"{with_monitor / without:.3f}",
            ],
        ],
    )
    report = f"Machine: {machine()}; model size '{args.size}'.\n\n{table}\n\n{overhead}\n"
    print(report)
    save_result(
        args.out,
        "kl_free",
        MEASURES,
        {
            "machine": machine(),
            "runs": [{"kind": k, "setting": s, **v} for (k, s), v in results.items()],
            "monitor_overhead": {"without": overhead_runs["without"], "with": overhead_runs["with"]},
            "markdown": report,
        },
    )


if __name__ == "__main__":
    main()
