"""The ``lora-rl`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import warnings

    from .demo.run import format_summary, run_demo

    # Deprecation notices transformers and TRL raise about their own internals.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft)\b")

    result = run_demo(steps=args.steps, rank=args.rank, seed=args.seed, output_dir=args.output_dir)
    print(format_summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-rl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a tiny local model with GRPO + LoRA and show what it learned")
    demo.add_argument("--steps", type=int, default=300, help="GRPO steps (default 300, about 30 s on 2 cores)")
    demo.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output-dir", default=None, help="where TRL writes (default: a temporary directory)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
