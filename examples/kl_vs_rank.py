"""Does policy drift grow with LoRA rank?  A KL-free GRPO sweep over ranks ([Rottman]'s claim, docs/theory.md §3).

    python examples/kl_vs_rank.py [--steps 60] [--ranks 1,2,4,8,16,32,64] [--out runs/kl_vs_rank.png]

The tiny local model (no download) learns the codebook task with LoRA on its output layer only
(with the Lightning reference module of examples/lightning_grpo.py: TRL refuses a LoRA on lm_head):
the single-layer setting in which the rank-dependent bound (γ‖BA‖₂)²H²/(4T²) holds for every token.
Each rank is trained twice, KL-free: with lora_alpha fixed (γ = α/r shrinks as r grows) and with
α ∝ r (γ fixed). The KL monitor measures the exact KL to the base model at the end; the plot shows
measured KL (mean and max per token) and the bound against rank. docs/theory.md §3 explains the
expectation: early in training KL scales as γ²·r, so it grows with rank at fixed γ and stays flat
with α fixed; the scaling decides the sign of [Rottman]'s effect.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


def train(rank: int, alpha: float, steps: int, seed: int = 0) -> dict[str, float]:
    """KL-free GRPO (the Lightning reference module) with LoRA on lm_head only; the final KL."""
    import lightning as L
    from peft import LoraConfig, get_peft_model

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from torch.utils.data import DataLoader

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask
    from lora_rl_plugins.integrations.lightning import LoraRLCallback

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from lightning_grpo import GRPOModule

    L.seed_everything(seed, verbose=False)
    tokenizer, task = build_tokenizer(), CodebookTask(seed=seed)
    base = build_tiny_model(seed=seed)
    task.warm_up(base, tokenizer, seed=seed)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["lm_head"]))
    module = GRPOModule(model, tokenizer, task.reward, beta=0.0)
    prompts = DataLoader(task.prompts(steps * 4, seed=seed), batch_size=4, collate_fn=list)
    callback = LoraRLCallback(kl_free=True, kl_every=1, load_entry_points=False, run_log=False)  # a sweep: no log
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, prompts)
    values = callback.host.plugin("kl_monitor").values
    return {
        "kl_mean": values["kl_mean"],
        "kl_max": values["kl_max"],
        "bound": values["bound"],
        "spectral": values["update_spectral_max"],
        "reward": float(trainer.callback_metrics["reward"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="KL-free GRPO sweep over LoRA ranks")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ranks", default="1,2,4,8,16,32,64")
    parser.add_argument("--alpha", type=float, default=16.0, help="lora_alpha when fixed; α = alpha·r/8 when ∝ r")
    parser.add_argument("--out", default="runs/kl_vs_rank.png", help="the figure (runs/ is git-ignored)")
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    results: dict[str, list[dict[str, float]]] = {"alpha fixed": [], "alpha ∝ r": []}
    for rank in ranks:
        for label, alpha in (("alpha fixed", args.alpha), ("alpha ∝ r", args.alpha * rank / 8)):
            result = train(rank, alpha, args.steps)
            results[label].append(result)
            print(
                f"r={rank:<3} {label:<12} α={alpha:<6g} reward {result['reward']:.2f}  KL mean {result['kl_mean']:.4f}"
                f"  max {result['kl_max']:.4f}  bound {result['bound']:.3f}  γ‖BA‖₂ {result['spectral']:.3f}",
                flush=True,
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, (label, rows) in zip(axes, results.items(), strict=True):
        axis.plot(ranks, [r["kl_mean"] for r in rows], "o-", label="measured KL, mean per token")
        axis.plot(ranks, [r["kl_max"] for r in rows], "s--", label="measured KL, max per token")
        axis.plot(ranks, [r["bound"] for r in rows], "^:", label="bound (γ‖BA‖₂)²H²/(4T²)")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("LoRA rank r")
        axis.set_title(f"KL-free GRPO, LoRA on lm_head, {label}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("KL(π_θ ‖ π_base), nats per token")
    axes[0].legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
