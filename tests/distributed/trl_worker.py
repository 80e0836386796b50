"""One process of a 2-process TRL GRPO run (launched by tests/test_distributed.py with `accelerate launch`)."""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
warnings.filterwarnings("ignore")

from grpo_common import tiny_grpo_trainer  # noqa: E402  (beside this script)

from lora_rl_plugins import hookimpl  # noqa: E402
from lora_rl_plugins.demo.task import CodebookTask  # noqa: E402
from lora_rl_plugins.integrations.trl import LoraRLCallback  # noqa: E402
from lora_rl_plugins.kl.measure import measure_kl  # noqa: E402


class ShardKL:
    """Records this process's own KL sums on the same samples the monitor measures."""

    def __init__(self) -> None:
        self.shards: list[dict[str, float]] = []

    @hookimpl
    def on_policy_sampled(self, sample):
        sums = measure_kl(
            sample.model,
            sample.input_ids,
            sample.attention_mask,
            sample.completion_mask,
            temperature=sample.temperature,
        )
        self.shards.append({"kl": sums.kl, "tokens": sums.tokens, "kl_max": sums.kl_max})


def main(out_dir: str) -> None:
    task = CodebookTask()
    calls: list[dict] = []

    def reward(prompts, completions, **_):
        values = [
            float(c[:1] == task.code[p[0]]) if i % 5 else (0.5 if c[:1] in "01234" else 0.0)
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        calls.append({"completions": list(completions), "rewards": values, "prompts": list(prompts)})
        return values

    trainer = tiny_grpo_trainer(out_dir, reward)
    shard = ShardKL()
    callback = LoraRLCallback(
        trainer,
        kl_every=1,
        kl_max_sequences=64,
        plugins=[shard],
        load_entry_points=False,
        informative_sampling=True,
        skip_after=1,
        revisit=0.0,
        skip_unsolved=True,
    )
    trainer.add_callback(callback)
    trainer.train()
    rank = trainer.accelerator.process_index
    result = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "calls": calls,
        "log_history": trainer.state.log_history,
        "state": callback.host.get_state(),
        "shards": shard.shards,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    trainer.accelerator.end_training()  # destroys the process group: no abort from live gloo threads at exit


if __name__ == "__main__":
    main(sys.argv[1])
    # The results are written. Skip interpreter teardown: torch's gloo threads can abort the process
    # ("terminate called without an active exception") while C++ statics are destroyed at exit, a
    # flake of the CPU test setup after a successful run, not of what the test checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
