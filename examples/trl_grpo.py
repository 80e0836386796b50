"""An ordinary TRL GRPO script with lora-rl-plugins added: the one line marked below.

    python examples/trl_grpo.py                              # the tiny local model, no download
    python examples/trl_grpo.py --model Qwen/Qwen2.5-0.5B-Instruct --steps 200   # a real Hub model
    python examples/trl_grpo.py --kl-free --kl-budget 0.05   # no reference model; the monitor guards

The task is the codebook bandit (prompt "d=", reward 1 when the answer starts with the hidden code
of d). Metrics land in trainer.state.log_history and every `--report-to` backend.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a Hub model id or local path (default: the tiny local model)")
    parser.add_argument("--steps", type=int, default=200, help="GRPO steps (default 200)")
    parser.add_argument(
        "--kl-free", action="store_true", help="train with beta=0.0 and no reference pass (the monitor stays on)"
    )
    parser.add_argument("--kl-budget", type=float, default=None, help="largest KL (nats/token) before stopping")
    parser.add_argument("--report-to", default="none", help="e.g. tensorboard, wandb")
    parser.add_argument("--output-dir", default="runs/trl_grpo", help="where TRL and the run log write")
    args = parser.parse_args(argv)

    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from lora_rl_plugins.demo.task import CodebookTask
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    task = CodebookTask()
    if args.model is None:  # the embedded default: built here, warmed up on the task's format
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer

        tokenizer, model = build_tokenizer(), build_tiny_model()
        task.warm_up(model, tokenizer)
        completion_length, learning_rate = 2, 2e-3
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model)
        completion_length, learning_rate = 8, 2e-5 * 10  # LoRA wants ~10x the full fine-tuning rate

    config = GRPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=completion_length,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        max_steps=args.steps,
        logging_steps=10,
        beta=0.0 if args.kl_free else 0.04,
        report_to=[] if args.report_to == "none" else [args.report_to],
        save_strategy="no",
        use_cpu=args.model is None,
        bf16=args.model is not None,  # on CPU bf16 autocast is slower, and TRL's `kl` then differs from the exact KL
        # TRL turns activation (gradient) checkpointing on by default, under the name transformers 5 deprecates
        # (FutureWarnings at every step); the tiny model needs no memory saved, so it is off, under its new name
        activation_checkpointing=args.model is not None,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=task.reward,
        args=config,
        train_dataset=task.dataset(args.steps * 4 + 16),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.add_callback(  # <- the added line (options: see the README)
        LoraRLCallback(
            trainer,
            answer_extractor=task.answer,
            kl_free=args.kl_free,
            kl_budget=args.kl_budget,
            on_budget="stop" if args.kl_budget else "warn",
        )
    )
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "bandwidth/bits_total" in entry][-1]
    print({key: value for key, value in last.items() if key.startswith(("reward", "bandwidth/", "kl"))})
    print(f"the run log is {args.output_dir}/lora_rl_metrics.jsonl: `lora-rl report {args.output_dir}` draws it")
    return trainer


if __name__ == "__main__":
    main()
