"""Informative prompt sampling versus plain GRPO and the after-generation filter: rollouts to an eval reward.

    python -m benchmarks.informative_sampling [--steps 300] [--seeds 0 1 2] [--targets codebook=0.8 pairs=0.3]

All three run on the Lightning reference module (examples/lightning_grpo.py), KL-free, side by side:
"plain" GRPO, "filter" (generate, drop groups whose rewards are all equal, refill with new prompts: the
peers' dynamic sampling) and "informative" (skip prompts whose last 2 visits taught nothing, before
generating; revisit with probability 0.1).

Two tasks: the demo's codebook (10 prompts "d=") and a harder one with 100 prompts "ab=" (each with its
own secret digit), so solved and unsolved prompts coexist. The eval reward is exact: the mean over
every prompt of π_θ(correct digit | prompt) at the sampling temperature (the expected reward of one
sampled rollout), measured every `--eval-every` steps with the learning plugin's probe machinery.
Rollouts are counted as generated (the filter generates more than it trains on); wall time excludes
the eval.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from .common import machine, markdown_table, save_result

#: The code this benchmark measures (git pathspecs): a change to it makes the result stale.
MEASURES = (
    "lora_rl_plugins",
    ":(exclude)lora_rl_plugins/report",
    ":(exclude)lora_rl_plugins/cli.py",
    "benchmarks/common.py",
    "benchmarks/informative_sampling.py",
    "examples/lightning_grpo.py",
)

MODES = ("plain", "filter", "informative")


class PairCodebook:
    """Prompts "ab=" for two digits, each mapped to an independent secret digit (100 prompts)."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.code = {f"{a}{b}=": str(rng.randrange(10)) for a in range(10) for b in range(10)}

    def prompts(self, count: int, seed: int = 0) -> list[str]:
        rng = random.Random(seed)
        keys = sorted(self.code)
        return [rng.choice(keys) for _ in range(count)]

    @property
    def reference_answers(self) -> dict[str, str]:
        """Every prompt's secret digit (the probe set of the eval)."""
        return dict(self.code)

    def reward(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [float(bool(c) and c[0] == self.code[p]) for p, c in zip(prompts, completions, strict=True)]


def _lightning_grpo() -> Any:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "examples" / "lightning_grpo.py"
    spec = importlib.util.spec_from_file_location("lightning_grpo", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["lightning_grpo"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run(task_name: str, mode: str, seed: int, steps: int, eval_every: int, target: float) -> dict[str, Any]:
    """One run of the Lightning reference GRPO module: ``mode`` is "plain", "filter" or "informative"."""
    import warnings

    warnings.filterwarnings("ignore")
    import lightning as L

    from lora_rl_plugins.learning.probes import measure_probes

    grpo = _lightning_grpo()
    task = PairCodebook(seed) if task_name == "pairs" else None
    # every mode draws its prompts in the same seeded order (plain and filter through the selector with
    # revisit=1.0, which never skips), so the modes differ only in what they do with zero-signal prompts
    same_order = {} if mode == "informative" else {"informative_sampling": True, "revisit": 1.0}
    module, prompts, callback = grpo.build(
        steps, True, 0.0, seed, sampling=mode, task=task, on_signal_exhausted="off", probe_every=10**9, **same_order
    )
    answers = dict(callback.host.plugin("learning").config.reference_answer)
    probe_prompts = list(answers)
    probe_answers = [answers[p] for p in probe_prompts]
    curve: list[tuple[int, float, int, float]] = []
    clock = {"spent": 0.0, "eval": 0.0, "started": time.perf_counter()}

    class Eval(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            step = trainer.global_step
            if step % eval_every and step != steps:
                return
            started = time.perf_counter()
            result = measure_probes(
                pl_module.model, pl_module.tokenizer, probe_prompts, probe_answers, temperature=pl_module.temperature
            )
            value = sum(2**v for v in result.policy_log2) / len(probe_prompts)
            clock["eval"] += time.perf_counter() - started
            elapsed = time.perf_counter() - clock["started"] - clock["eval"]
            curve.append((step, value, pl_module.rollouts_generated, elapsed))

    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback, Eval()],
    )
    clock["started"] = time.perf_counter()
    trainer.fit(module, prompts)
    reached = next(((s, n, t) for s, v, n, t in curve if v >= target), None)
    learning = callback.host.plugin("learning")
    return {
        "final_eval_reward": curve[-1][1],
        "steps_to_target": reached[0] if reached else None,
        "rollouts_to_target": reached[1] if reached else None,
        "seconds_to_target": reached[2] if reached else None,
        "rollouts_generated": module.rollouts_generated,
        "rollouts_skipped": learning.skipped_prompts * module.generations,
        "train_seconds": curve[-1][3],
        "curve": curve,
    }


def ratios(summary: dict[str, Any]) -> dict[str, float]:
    """plain / mode of the rollouts to the target summed over seeds; where plain never reached it, its total
    rollouts stand in and the ratio is a lower bound ("..._at_least")."""
    out = {}
    plain = summary["plain"]["rollouts_to_target"]
    plain_total = [
        r if r is not None else g for r, g in zip(plain, summary["plain"]["rollouts_generated"], strict=True)
    ]
    for mode in ("filter", "informative"):
        other = summary[mode]["rollouts_to_target"]
        if not all(x is not None for x in other):
            continue
        key = f"rollout_ratio_plain_over_{mode}" + ("" if all(x is not None for x in plain) else "_at_least")
        out[key] = sum(plain_total) / sum(other)
    return out


def table(results: dict[str, Any]) -> str:
    """The README table: per task and mode, rollouts and seconds to the target (per seed) and final eval reward."""
    rows = []
    for task, summary in results["summary"].items():
        for mode in MODES:
            runs = [results["runs"][f"{task}/{mode}/{seed}"] for seed in results["settings"]["seeds"]]
            reached = [r["rollouts_to_target"] for r in runs]
            seconds = [r["seconds_to_target"] for r in runs]
            rows.append(
                [
                    f"{task} (target {summary['target']:g})",
                    mode,
                    " / ".join("not reached" if x is None else f"{x:,}" for x in reached),
                    " / ".join("—" if x is None else f"{x:.0f}" for x in seconds),
                    f"{summary[mode]['final_eval_reward_mean']:.3f}",
                    f"{sum(r['rollouts_generated'] for r in runs) / len(runs):,.0f}",
                ]
            )
    header = ["task", "mode", "rollouts to target (per seed)", "s to target", "final eval reward", "rollouts generated"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["codebook", "pairs"])
    parser.add_argument("--targets", nargs="+", default=["codebook=0.8", "pairs=0.3"], help="TASK=eval reward to reach")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/informative_sampling.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args), "runs": {}, "summary": {}}
    for task in args.tasks:
        target = float(dict(t.split("=") for t in args.targets)[task])
        for mode in MODES:
            for seed in args.seeds:
                outcome = run(task, mode, seed, args.steps, args.eval_every, target)
                results["runs"][f"{task}/{mode}/{seed}"] = outcome
                print(task, mode, seed, {k: v for k, v in outcome.items() if k != "curve"}, flush=True)
        summary: dict[str, Any] = {"target": target}
        for mode in MODES:
            runs = [results["runs"][f"{task}/{mode}/{s}"] for s in args.seeds]
            summary[mode] = {
                "final_eval_reward_mean": sum(r["final_eval_reward"] for r in runs) / len(runs),
                "rollouts_to_target": [r["rollouts_to_target"] for r in runs],
                "seconds_to_target": [r["seconds_to_target"] for r in runs],
                "rollouts_generated": [r["rollouts_generated"] for r in runs],
            }
        summary.update(ratios(summary))
        results["summary"][task] = summary
        print(task, json.dumps(summary), flush=True)
    results["markdown"] = table(results)
    print(results["markdown"])
    save_result(args.out, "informative_sampling", MEASURES, results)


if __name__ == "__main__":
    main()
