"""A 2-process DDP (gloo, CPU) Lightning GRPO run (launched by tests/test_distributed.py)."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import lightning as L  # noqa: E402
import lightning_grpo  # noqa: E402

from lora_rl_plugins.integrations.lightning import LoraRLCallback  # noqa: E402

for name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(name).setLevel(logging.ERROR)


class Recording(lightning_grpo.GRPOModule):
    """The reference module, remembering what it returned on this process."""

    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.returned.append({"rewards": output["rewards"].tolist(), "completions": list(output["completions"])})
        return output


def main(out_dir: str) -> None:
    module, _, _ = lightning_grpo.build(steps=4, kl_free=True, beta=0.0)
    module.__class__ = Recording
    module.returned = []
    callback = LoraRLCallback(kl_free=True, kl_every=1, load_entry_points=False)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[callback],
        log_every_n_steps=1,
        logger=L.pytorch.loggers.CSVLogger(out_dir, name="ddp", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    from lora_rl_plugins.demo.task import CodebookTask

    rank_prompts = CodebookTask().prompts(64, seed=int(os.environ.get("LOCAL_RANK", "0")) + 10)
    trainer.fit(module, lightning_grpo.PromptStream(rank_prompts, batch_size=2))
    result = {"rank": trainer.global_rank, "returned": module.returned, "state": callback.host.get_state()}
    with open(os.path.join(out_dir, f"lightning_rank{trainer.global_rank}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1])
