"""One process of a 2-process TRL GRPO run with sampling="filter" (launched by tests/test_distributed.py)."""

from __future__ import annotations

import json
import os
import random
import sys
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
warnings.filterwarnings("ignore")

from grpo_common import tiny_grpo_trainer  # noqa: E402  (beside this script)

from lora_rl_plugins.integrations.trl import LoraRLCallback  # noqa: E402


def main(out_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    rng = random.Random(rank)
    calls: list[list[float]] = []

    def reward(prompts, completions, **_):  # a group of 8 is all 0 with probability 0.85^8 ≈ 0.27
        values = [float(rng.random() < 0.15) for _ in prompts]
        calls.append(values)
        return values

    trainer = tiny_grpo_trainer(out_dir, reward)
    callback = LoraRLCallback(
        trainer, load_entry_points=False, sampling="filter", filter_max_rounds=4, skip_after=10
    )  # skip_after=10: no prompt judged "never varied" by chance, every slot gets its rounds
    trainer.add_callback(callback)
    outputs: list[dict] = []
    inner = trainer._generate_and_score_completions

    def generate(inputs):
        output = inner(inputs)
        outputs.append(
            {
                "advantages": output["advantages"].tolist(),
                "tokens": int(output["completion_mask"].sum()),
                "num_items_in_batch": int(output["num_items_in_batch"]),
            }
        )
        return output

    trainer._generate_and_score_completions = generate
    trainer.train()
    result = {
        "rank": rank,
        "calls": calls,
        "outputs": outputs,
        "log_history": trainer.state.log_history,
        "state": callback.host.get_state(),
    }
    with open(os.path.join(out_dir, f"rank{trainer.accelerator.process_index}.json"), "w") as handle:
        json.dump(result, handle)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see trl_worker.py: skip interpreter teardown after the results are written
