"""GRPO with LoRA in PyTorch Lightning: a complete, readable reference module, with the callback on.

    python examples/lightning_grpo.py [--steps 150] [--kl-free] [--beta 0.04] [--logdir runs/lightning_grpo]

Trains the tiny local model (no download) on the codebook task on CPU and shows reward rising.
Copy ``GRPOModule`` for your own model: it samples K completions per prompt, scores them,
normalises rewards within each group, and minimises the clipped policy loss, plus an optional KL
term toward the reference (the same model with its adapter disabled). Its ``training_step``
returns the dict that ``lora_rl_plugins.integrations.lightning.LoraRLCallback`` reads.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lora_rl_plugins.integrations.lightning import LoraRLCallback  # noqa: E402


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for every completion token up to and including the first <eos>, 0 after it."""
    is_eos = completion_ids == eos_token_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], is_eos.size(1)).int())
    positions = torch.arange(completion_ids.size(1), device=completion_ids.device).expand_as(completion_ids)
    return (positions <= first_eos.unsqueeze(1)).long()


def per_token_logps(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_length: int, temperature: float
) -> torch.Tensor:
    """log pi(completion token | prefix) for the last ``completion_length`` positions."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -completion_length - 1 : -1]
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logps.gather(-1, input_ids[:, -completion_length:].unsqueeze(-1)).squeeze(-1)


class PromptStream:
    """Batches of prompts in a fixed order that remember their position, so a run resumed from a
    checkpoint continues with the next batch (Lightning saves and restores ``state_dict()``).

    With ``sampler`` (``LoraRLCallback.informative_sampler(prompts)``) each batch's prompts are drawn
    by the learning plugin instead: prompts that taught nothing lately are skipped before generation.
    """

    def __init__(self, prompts: list[str], batch_size: int, sampler: Callable[[int], list[int]] | None = None) -> None:
        self.prompts, self.batch_size, self.position, self.sampler = prompts, batch_size, 0, sampler
        self.refilled = 0

    def __iter__(self) -> Any:
        while self.position + self.batch_size <= len(self.prompts):
            start = self.position
            self.position += self.batch_size
            if self.sampler is not None:
                yield [self.prompts[i] for i in self.sampler(self.batch_size)]
            else:
                yield self.prompts[start : start + self.batch_size]

    def draw(self, count: int) -> list[str]:
        """``count`` further prompts (the after-generation filter's refill), cycling through the list from its
        end (the stream's own batches are unchanged)."""
        drawn = [self.prompts[-1 - (self.refilled + i) % len(self.prompts)] for i in range(count)]
        self.refilled += count
        return drawn

    def __len__(self) -> int:
        return len(self.prompts) // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "refilled": self.refilled}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]
        self.refilled = state.get("refilled", 0)


class GRPOModule(L.LightningModule):
    """Group Relative Policy Optimisation on a PEFT LoRA model.

    Args:
        model: a PEFT model (its adapter is what trains; disabling it gives the reference policy).
        tokenizer: the model's tokenizer (left padding).
        reward_fn: (prompts, completions) -> one float per completion.
        generations: K, completions sampled per prompt.
        beta: KL coefficient toward the reference (0 = KL-free; the callback may turn a penalty on).
        sampling_seed: sampling at step t uses seed sampling_seed + t, so a resumed run samples
            exactly what an uninterrupted one would have.
        refill: the after-generation filter (the peers' dynamic sampling, for comparison): groups whose
            rewards are all equal are dropped after generation and replaced by groups of ``refill(n)``
            new prompts, up to ``max_refills`` extra generations per step. ``rollouts_generated``
            counts every rollout generated.
    """

    # How training_step turns rewards into advantages, for the callback (names as in TRL's GRPOConfig):
    # (r - group mean) / (group std + 1e-4), one reward function.
    scale_rewards = "group"
    multi_objective_aggregation = "sum_then_normalize"
    advantage_epsilon = 1e-4

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        reward_fn: Callable[[list[str], list[str]], list[float]],
        *,
        generations: int = 8,
        max_new_tokens: int = 2,
        temperature: float = 1.0,
        learning_rate: float = 2e-3,
        beta: float = 0.0,
        clip_epsilon: float = 0.2,
        sampling_seed: int = 0,
        refill: Callable[[int], list[str]] | None = None,
        max_refills: int = 4,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.reward_fn = model, tokenizer, reward_fn
        self.generations, self.max_new_tokens, self.temperature = generations, max_new_tokens, temperature
        self.learning_rate, self.beta, self.clip_epsilon = learning_rate, beta, clip_epsilon
        self.sampling_seed = sampling_seed
        self.refill, self.max_refills = refill, max_refills
        self.rollouts_generated = 0
        self.generation_seconds = 0.0
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.learning_rate)
        schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def sample(self, prompts: list[str], attempt: int = 0) -> dict[str, torch.Tensor]:
        """K completions per prompt, prompt-major: rollouts [g*K, (g+1)*K) belong to prompt g."""
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        prompt_ids = encoded["input_ids"].repeat_interleave(self.generations, dim=0)
        prompt_mask = encoded["attention_mask"].repeat_interleave(self.generations, dim=0)
        was_training = self.model.training
        self.model.eval()
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # step-keyed sampling, global RNG untouched
            torch.manual_seed(self.sampling_seed + self.global_step + 1_000_003 * attempt)
            output = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                do_sample=True,
                temperature=self.temperature,
                top_k=0,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        self.model.train(was_training)
        self.generation_seconds += time.perf_counter() - started
        self.rollouts_generated += prompt_ids.size(0)
        completion_ids = output[:, prompt_ids.size(1) :]
        if completion_ids.size(1) < self.max_new_tokens:  # every sequence ended early: pad to a fixed width
            pad = torch.full(
                (completion_ids.size(0), self.max_new_tokens - completion_ids.size(1)),
                self.tokenizer.pad_token_id,
                dtype=completion_ids.dtype,
                device=completion_ids.device,
            )
            completion_ids = torch.cat([completion_ids, pad], dim=1)
        mask = completion_mask(completion_ids, self.tokenizer.eos_token_id)
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": mask,
        }

    def score(self, prompts: list[str], attempt: int = 0) -> tuple[dict[str, torch.Tensor], list[str], torch.Tensor]:
        """Sample K completions per prompt and score them: (rollout tensors, completion texts, rewards [G, K])."""
        rollout = self.sample(prompts, attempt)
        texts = self.tokenizer.batch_decode(
            rollout["completion_ids"] * rollout["completion_mask"], skip_special_tokens=True
        )
        repeated = [p for p in prompts for _ in range(self.generations)]
        rewards = torch.tensor(self.reward_fn(repeated, texts), dtype=torch.float32, device=self.device)
        return rollout, texts, rewards.view(len(prompts), self.generations)

    def filtered(self, prompts: list[str]) -> tuple[list[str], dict[str, torch.Tensor], list[str], torch.Tensor]:
        """The after-generation filter: keep groups whose advantages are not all zero (the core's definition,
        ``zero_information_groups``), refill the rest with new prompts."""
        from lora_rl_plugins.learning.filtering import zero_information_groups

        rollout, texts, rewards = self.score(prompts)
        kept: list[tuple[str, dict[str, torch.Tensor], list[str], torch.Tensor]] = []
        dropped: list[tuple[str, dict[str, torch.Tensor], list[str], torch.Tensor]] = []
        for attempt in range(self.max_refills + 1):
            k = self.generations
            zero = zero_information_groups([[r] for r in rewards.flatten().tolist()], k)
            for g, prompt in enumerate(prompts):
                group = ({key: v[g * k : (g + 1) * k] for key, v in rollout.items()}, texts[g * k : (g + 1) * k])
                entry = (prompt, group[0], group[1], rewards[g])
                (dropped if zero[g] else kept).append(entry)
            missing = self._batch - len(kept)
            if missing <= 0 or attempt == self.max_refills:
                break
            prompts = self.refill(missing)  # type: ignore[misc]
            rollout, texts, rewards = self.score(prompts, attempt + 1)
        chosen = (kept + dropped)[: self._batch]  # a batch stays full: zero-signal groups only if refills ran out
        width = max(e[1]["completion_ids"].size(1) for e in chosen)
        prompt_width = max(e[1]["prompt_ids"].size(1) for e in chosen)

        def pad(t: torch.Tensor, size: int, value: int, left: bool) -> torch.Tensor:
            fill = torch.full((t.size(0), size - t.size(1)), value, dtype=t.dtype, device=t.device)
            return torch.cat([fill, t] if left else [t, fill], dim=1)

        pad_id = self.tokenizer.pad_token_id
        merged = {
            "prompt_ids": torch.cat([pad(e[1]["prompt_ids"], prompt_width, pad_id, True) for e in chosen]),
            "prompt_mask": torch.cat([pad(e[1]["prompt_mask"], prompt_width, 0, True) for e in chosen]),
            "completion_ids": torch.cat([pad(e[1]["completion_ids"], width, pad_id, False) for e in chosen]),
            "completion_mask": torch.cat([pad(e[1]["completion_mask"], width, 0, False) for e in chosen]),
        }
        return [e[0] for e in chosen], merged, [t for e in chosen for t in e[2]], torch.stack([e[3] for e in chosen])

    def training_step(self, batch: list[str], batch_idx: int) -> dict[str, Any]:
        prompts = list(batch)
        self._batch = len(prompts)
        self.generation_seconds = 0.0
        if self.refill is not None:
            prompts, rollout, texts, rewards = self.filtered(prompts)
        else:
            rollout, texts, rewards = self.score(prompts)
        # group-normalised advantages: (r - mean of the prompt's group) / (std of the group + eps)
        advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        advantages = advantages.reshape(-1, 1)

        input_ids = torch.cat([rollout["prompt_ids"], rollout["completion_ids"]], dim=1)
        attention_mask = torch.cat([rollout["prompt_mask"], rollout["completion_mask"]], dim=1)
        length = rollout["completion_ids"].size(1)
        logps = per_token_logps(self.model, input_ids, attention_mask, length, self.temperature)
        old_logps = logps.detach()  # one update per batch: the sampling policy is the current one
        ratio = torch.exp(logps - old_logps)
        clipped = torch.clamp(ratio, 1 - self.clip_epsilon, 1 + self.clip_epsilon)
        per_token_loss = -torch.min(ratio * advantages, clipped * advantages)

        lora_rl = LoraRLCallback.of(self.trainer)
        beta = lora_rl.kl_beta(self.beta) if lora_rl else self.beta
        if beta > 0:  # only then is the reference evaluated: KL-free training skips this forward pass
            with torch.no_grad(), self.model.disable_adapter():
                ref_logps = per_token_logps(self.model, input_ids, attention_mask, length, self.temperature)
            log_ratio = ref_logps - logps
            per_token_loss = per_token_loss + beta * (torch.exp(log_ratio) - log_ratio - 1)
        mask = rollout["completion_mask"].float()
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1)
        self.log("reward", rewards.mean(), prog_bar=True, batch_size=len(prompts))
        self.log("kl_beta", float(beta), batch_size=len(prompts))
        self.log("rollouts_generated", float(self.rollouts_generated), batch_size=len(prompts))
        return {
            "loss": loss,
            "rewards": rewards,
            "completions": texts,
            "temperature": self.temperature,
            "prompts": prompts,
            "generation_seconds": self.generation_seconds,
            **rollout,
        }


def build(
    steps: int,
    kl_free: bool,
    beta: float,
    seed: int = 0,
    *,
    sampling: str = "plain",
    task: Any = None,
    **options: Any,
) -> tuple[GRPOModule, PromptStream, LoraRLCallback]:
    """The tiny local model (warmed up on the task's format), a LoRA adapter, prompts and the callback.

    ``sampling``: "plain", "informative" (skip prompts that taught nothing, before generation) or "filter"
    (generate, drop zero-signal groups, refill). ``task``: an object with ``prompts(count, seed)``,
    ``reward`` and ``reference_answers`` (default: the codebook task). ``options``: more callback options.
    """
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask

    L.seed_everything(seed, verbose=False)
    if sampling not in ("plain", "informative", "filter"):
        raise ValueError(f"sampling must be 'plain', 'informative' or 'filter', got {sampling!r}")
    tokenizer, codebook = build_tokenizer(), CodebookTask(seed=seed)
    task = task or codebook
    base = build_tiny_model(seed=seed)
    codebook.warm_up(base, tokenizer, seed=seed)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    if task is codebook:
        options = {"answer_extractor": task.answer, "answer_space_size": task.digits, **options}
    callback = LoraRLCallback(
        kl_free=kl_free,
        load_entry_points=False,
        informative_sampling=options.pop("informative_sampling", sampling == "informative"),
        reference_answer=task.reference_answers,
        **options,
    )
    texts = task.prompts(steps * 4, seed=seed)
    prompts = PromptStream(texts, batch_size=4, sampler=callback.informative_sampler(texts, seed))
    module = GRPOModule(
        model,
        tokenizer,
        task.reward,
        beta=0.0 if kl_free else beta,
        sampling_seed=seed,
        refill=prompts.draw if sampling == "filter" else None,
    )
    return module, prompts, callback


def main(argv: list[str] | None = None) -> L.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--kl-free", action="store_true", help="no KL term; the callback's monitor is the guard rail")
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--logdir", default="runs/lightning_grpo", help="where the logs go (runs/ is git-ignored)")
    parser.add_argument(
        "--sampling",
        default="plain",
        choices=["plain", "informative", "filter"],
        help="informative: skip prompts that taught nothing before generating; filter: generate, drop, refill",
    )
    args = parser.parse_args(argv)
    module, prompts, callback = build(args.steps, args.kl_free, args.beta, sampling=args.sampling)
    trainer = L.Trainer(
        max_steps=args.steps,
        max_epochs=1,  # the prompt stream holds exactly max_steps batches: one epoch ("Epoch 0/0" in the bar)
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        log_every_n_steps=1,
        logger=L.pytorch.loggers.CSVLogger(args.logdir, name="grpo"),
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, prompts)
    metrics_file = os.path.join(trainer.logger.log_dir, "metrics.csv")
    with open(metrics_file) as handle:
        rewards = [float(row["reward"]) for row in csv.DictReader(handle) if row.get("reward")]
    tenth = max(1, len(rewards) // 10)
    print(
        f"{trainer.global_step} steps: reward {sum(rewards[:tenth]) / tenth:.2f} -> {sum(rewards[-tenth:]) / tenth:.2f}"
        f" | {callback.host.summary_line()}\nmetrics (bandwidth/*, kl_monitor/*, reward) in {metrics_file}"
        f"\n`lora-rl report {args.logdir}` draws them"
    )
    return trainer


if __name__ == "__main__":
    main()
