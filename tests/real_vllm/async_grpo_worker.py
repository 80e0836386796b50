"""One TRL ``AsyncGRPOTrainer`` run with ``LoraRLAsyncCallback`` against a vLLM server started with
``--enable-lora`` (adapter sync: every weight sync saves the adapter and loads it under a new name).
Writes what the test checks to ``<out>/async-<scenario>.json``.

    python async_grpo_worker.py SCENARIO MODEL_DIR OUT URL

SCENARIO: ``train`` (end to end, ``max_staleness=0`` so samples generated before a sync are dropped) or
``refused`` (an adapter TRL syncs but vLLM refuses: ``lora_bias=True``; the callback must refuse it before
the first weight sync and any training step).

The trainer's forward runs TRL's tree attention (``trl/experimental/async_grpo/packing.py``), whose only
kernel is FlashAttention-3 fetched from the Hub (``kernels-community/flash-attn3``): CUDA only, and no Hub
here. ``cpu_tree_attention`` below is the same attention (varlen, causal aligned bottom-right, keys gathered
by ``tree_kv_index``) written with plain torch, registered under TRL's name after the trainer is built.
And ``trl.trainer.utils.get_peak_flops_per_device`` (for MFU metrics only) calls
``torch.cuda.get_device_name`` unconditionally, so the trainer cannot be built without CUDA: it answers None
here (TRL's own answer for an unknown device: MFU metrics off). Everything else (rollout worker process,
vLLM generation, rewards, advantages, staleness drops, adapter sync, loss) is TRL's and vLLM's own.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def first_char_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """1 when the completion starts with 0-4 (module level: the rollout worker process unpickles it)."""
    return [float(c[0]["content"][:1] in "01234") for c in completions]


def cpu_tree_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    *,
    tree_kv_index: Any,
    tree_cu_seqlens_q: Any,
    tree_cu_seqlens_k: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """``flash_attn_varlen_func(q, k[kv_index], v[kv_index], cu_q, cu_k, causal=True)`` in plain torch:
    segment i's queries attend to its keys ``cu_k[i]:cu_k[i+1]``, query a to key b when
    b <= a + (len_k - len_q). Shapes: query [1, H, T, D], key/value [1, Hkv, T, D]; returns [1, T, H, D]."""
    import torch

    q = query.transpose(1, 2)[0]
    k = key.transpose(1, 2)[0].index_select(0, tree_kv_index)
    v = value.transpose(1, 2)[0].index_select(0, tree_kv_index)
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = torch.zeros_like(q)
    cu_q, cu_k = tree_cu_seqlens_q.tolist(), tree_cu_seqlens_k.tolist()
    for i in range(len(cu_q) - 1):
        qs, qe, ks, ke = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        if qe == qs:
            continue
        qi, ki, vi = (x.transpose(0, 1) for x in (q[qs:qe], k[ks:ke], v[ks:ke]))  # [H, L, D]
        scores = qi @ ki.transpose(-1, -2) * scale
        lq, lk = qe - qs, ke - ks
        allowed = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[qs:qe] = (scores.softmax(-1) @ vi).transpose(0, 1)
    return out.unsqueeze(0), None


def main() -> None:
    import torch
    import trl.experimental.async_grpo.async_grpo_trainer as agt
    from async_grpo_worker import first_char_reward as reward
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AttentionInterface
    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer
    from trl.experimental.async_grpo.packing import TREE_ATTENTION
    from vllm_cpu_sync import write_json

    from lora_rl_plugins.demo.model import build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask
    from lora_rl_plugins.integrations.trl_async import LoraRLAsyncCallback

    scenario, model_dir, out, url = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    tokenizer = build_tokenizer()
    # the rollout worker renders chat prompts and parses replies: a plain template and a text-only reply parser
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.response_template = {
        "defaults": {"role": "assistant"},
        "fields": {"content": {"close_pattern": r"<eos>\s*|$", "content": "text"}},
    }
    prompts = [row["prompt"] for row in CodebookTask().dataset(64)]
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    args = AsyncGRPOConfig(
        output_dir=str(out / f"async-{scenario}"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=3,
        max_steps=4,
        learning_rate=5e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        dtype="float32",
        vllm_server_base_url=url,
        vllm_server_timeout=60,
        max_staleness=0,
        weight_sync_steps=1,
        token_budget=0,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        heartbeat_stale_after_s=600,
    )
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", lora_bias=scenario == "refused"
    )
    agt.get_peak_flops_per_device = lambda accelerator, dtype: None  # CUDA-only lookup (module docstring)
    started = time.perf_counter()
    trainer = AsyncGRPOTrainer(
        model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=lora,
    )  # fmt: skip
    AttentionInterface.register(TREE_ATTENTION, cpu_tree_attention)
    built = time.perf_counter() - started
    server_info = trainer.vllm_client.get_server_info()

    taken: list[dict[str, Any]] = []  # every sample the trainer takes, recorded beneath the callback
    queue, version = trainer.rollout_queue, lambda: trainer.model_version

    class Recorder:
        def get(self, *a: Any, **k: Any) -> Any:
            s = queue.get(*a, **k)
            taken.append(
                {
                    "group_id": s.group_id,
                    "model_version": s.model_version,
                    "trainer_version": version(),
                    "advantage": s.advantage,
                    "metrics": s.metrics,
                    "completion": s.completion[0]["content"] if s.completion else "",
                    "step": trainer.state.global_step + 1,
                }
            )
            return s

        def __getattr__(self, name: str) -> Any:
            return getattr(queue, name)

    trainer.rollout_queue = Recorder()
    # every sequence measured: the recomputation below is over the whole sample
    callback = LoraRLAsyncCallback(trainer, load_entry_points=False, kl_every=1, kl_max_sequences=4096)

    monitor = callback.host.plugin("kl_monitor")
    kl_pairs: list[tuple[float, float]] = []
    measure = monitor.measure

    def measured(sample: Any) -> None:
        from trl_vllm_worker import own_kl

        expected = own_kl(
            sample.model, sample.input_ids, sample.attention_mask, sample.completion_mask, sample.temperature
        )
        measure(sample)
        kl_pairs.append((monitor.values["kl_mean"], expected))

    monitor.measure = measured
    error = None
    started = time.perf_counter()
    try:
        trainer.train()
    except Exception as raised:  # the refusal scenario records what was raised, and how far training got
        error = f"{type(raised).__name__}: {raised}"
    trained = time.perf_counter() - started
    lora_dir = Path(args.output_dir) / ".vllm_lora"
    write_json(
        out / f"async-{scenario}.json",
        {
            "error": error,
            "server_lora_config": server_info.get("lora_config"),
            "lora_sync": trainer._lora_sync,
            "global_step": trainer.state.global_step,
            "model_version": trainer.model_version,
            "adapters_published": sorted(p.name for p in lora_dir.iterdir()) if lora_dir.is_dir() else [],
            "taken": taken,
            "log_history": trainer.state.log_history,
            "kl_pairs": kl_pairs,
            "dropped": callback.dropped,
            "plugin_state": trainer.state.stateful_callbacks.get("LoraRLCheckpointState", {})
            .get("attributes", {})
            .get("plugin_state", {}),
            "seconds": {"build": built, "train": trained},
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
