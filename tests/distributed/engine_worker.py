"""One process of a 2-process GRPO + LoRA run under DDP, FSDP1, FSDP2 or DeepSpeed ZeRO-2/3 (launched by
tests/test_engines.py with `accelerate launch --config_file tests/distributed/<engine>.yaml`).

Env: FORCE_ENGINE_ON_CPU=1 imports the test-only shim `force_cpu_engine` (accelerate takes its FSDP /
DeepSpeed path on CPU with gloo); EMPTY_STEPS (default "2,4"): generation batches at which process 1
hands the plugins no sequences at all (the hang case: it must still join every collective call);
RESUME=1 saves a checkpoint at step 2 and runs a second trainer resumed from it.

Writes OUT/rank{r}.pt: the rewards of every reward call, the log history, the plugins' state, and at
every KL measurement this process's sample plus the full LoRA weights gathered with the engine's
public API (not the library's code), for the test to recompute the numbers in one process.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
warnings.filterwarnings("ignore")

if os.environ.get("FORCE_ENGINE_ON_CPU") == "1":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import force_cpu_engine  # noqa: F401

import torch  # noqa: E402
from grpo_common import tiny_grpo_trainer  # noqa: E402  (beside this script)

import lora_rl_plugins.kl.measure as kl_measure  # noqa: E402
from lora_rl_plugins import hookimpl  # noqa: E402
from lora_rl_plugins.demo.task import CodebookTask  # noqa: E402
from lora_rl_plugins.integrations.trl import LoraRLCallback  # noqa: E402

TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]  # TRL 1.16 refuses LoRA on lm_head
LORA = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS}


def full_lora_weights(trainer) -> dict[str, torch.Tensor]:
    """Every LoRA parameter, full, through the engine's public gathering API (collective)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    wrapped = trainer.model_wrapped
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]

    def clean(name: str) -> str:
        return name.replace("_fsdp_wrapped_module.", "")

    if any(hasattr(p, "ds_id") for _, p in named):  # DeepSpeed ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            return {clean(n): p.detach().clone() for n, p in named}
    if any(hasattr(p, "full_tensor") for _, p in named):  # FSDP2: DTensors
        return {clean(n): p.full_tensor().detach().clone() for n, p in named}
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(wrapped, FSDP):  # FSDP1: the whole model, summoned (what the library avoids doing)
        with FSDP.summon_full_params(wrapped, writeback=False):
            return {
                clean(n): p.detach().clone()
                for n, p in model.named_parameters()
                if "lora_" in n and "flat_param" not in n
            }
    return {clean(n): p.detach().clone() for n, p in named}


class Recorder:
    """At every generation batch: this process's sample and the full LoRA weights."""

    fail_fast = True  # a fault here must fail the test, not disable the recorder

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.records: list[dict] = []

    @hookimpl
    def on_policy_sampled(self, sample) -> None:
        self.records.append(
            {
                "step": sample.step,
                "input_ids": sample.input_ids.cpu(),
                "attention_mask": sample.attention_mask.cpu(),
                "completion_mask": sample.completion_mask.cpu(),
                "temperature": sample.temperature,
                "lora": {k: v.cpu() for k, v in full_lora_weights(self.trainer).items()},
            }
        )


def run(out_dir: str, *, record: bool, save: bool, resume_from: str | None = None):
    """A 4-step GRPO run with the callback (kl_every=1); returns (trainer, callback, reward calls, recorder)."""
    task = CodebookTask()
    calls: list[dict] = []

    def reward(prompts, completions, **_):
        values = [
            float(c[:1] == task.code[p[0]]) if i % 5 else (0.5 if c[:1] in "01234" else 0.0)
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        calls.append({"completions": list(completions), "rewards": values})
        return values

    trainer = tiny_grpo_trainer(
        out_dir,
        reward,
        lora=LORA,
        max_completion_length=3,
        use_cpu=os.environ.get("USE_CPU", "0") == "1",
        save_strategy="steps" if save else "no",
        save_steps=2,
    )
    rank = trainer.accelerator.process_index
    recorder = Recorder(trainer) if record else None
    plugins = [recorder] if recorder else []
    callback = LoraRLCallback(trainer, kl_every=1, kl_max_sequences=64, plugins=plugins, load_entry_points=False)
    trainer.add_callback(callback)
    empty_steps = {int(s) for s in os.environ.get("EMPTY_STEPS", "2,4").split(",") if s}
    policy_sampled = callback.session.policy_sampled

    def maybe_empty(**sample):  # the hang case: process 1 hands the plugins no sequences at these batches
        if rank == 1 and trainer.state.global_step + 1 in empty_steps:
            keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
            sample = {**sample, **{k: sample[k][:0] for k in keys}}
        policy_sampled(**sample)

    callback.session.policy_sampled = maybe_empty
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer, callback, calls, recorder


def main(out_dir: str) -> None:
    # one completion position per output-layer chunk: processes compute different numbers of chunks
    kl_measure.measure_kl = functools.partial(kl_measure.measure_kl, max_chunk_elements=1)
    resume = os.environ.get("RESUME") == "1"
    trainer, callback, calls, recorder = run(out_dir, record=True, save=resume)
    rank = trainer.accelerator.process_index
    facts = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "is_fsdp2": bool(getattr(trainer.accelerator, "is_fsdp2", False)),
    }
    result = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "facts": facts,
        "calls": calls,
        "log_history": trainer.state.log_history,
        "state": callback.host.get_state(),
        "records": recorder.records,
    }
    if resume:  # a second run resumed from the step-2 checkpoint of the first, in the same processes
        checkpoint = os.path.join(out_dir, "trl", "checkpoint-2")
        resumed, resumed_callback, _, resumed_recorder = run(out_dir, record=True, save=False, resume_from=checkpoint)
        result["resumed_records"] = resumed_recorder.records
        result["resumed_log_history"] = resumed.state.log_history
        result["resumed_state"] = resumed_callback.host.get_state()
        result["resumed_step"] = resumed.state.global_step
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    trainer.accelerator.end_training()  # destroys the process group: no abort from live gloo threads at exit


if __name__ == "__main__":
    main(sys.argv[1])
    # The results are written. Skip interpreter teardown: torch's gloo threads can abort the process
    # ("terminate called without an active exception") while C++ statics are destroyed at exit, a
    # flake of the CPU test setup after a successful run, not of what the test checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
