"""Peak memory of the KL measurement at a 151,936-token vocabulary, chunked vs naive full logits.

    python -m benchmarks.kl_memory

A Qwen-sized vocabulary (151,936) on a small body (hidden 128, 2 layers), 4 sequences of 16 prompt
+ 256 completion tokens. Each method runs in a fresh process; the figure is the growth of peak RSS
during the measurement (above the process's peak after the model and inputs were built), and the
results of both methods are compared to check they agree.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from typing import Any

from .common import machine, markdown_table, save_result

#: The code this benchmark measures (git pathspecs): a change to it makes the result stale.
MEASURES = ("lora_rl_plugins/kl", "lora_rl_plugins/demo/model.py", "benchmarks/common.py", "benchmarks/kl_memory.py")

VOCAB, BATCH, PROMPT, COMPLETION = 151_936, 4, 16, 256


def _setup() -> tuple[Any, Any, Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model

    torch.manual_seed(0)
    base = build_tiny_model(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, vocab_size=VOCAB)
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(0, VOCAB, (BATCH, PROMPT + COMPLETION))
    return model, ids, torch.ones_like(ids), torch.ones(BATCH, COMPLETION)


def _naive(model, ids, attention, mask) -> float:
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits[:, -COMPLETION - 1 : -1], -1)
        with model.disable_adapter():
            ref = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits[:, -COMPLETION - 1 : -1], -1)
        kl = (logp.exp() * (logp - ref)).sum(-1)
    return float((kl * mask).sum() / mask.sum())


def _chunked(model, ids, attention, mask) -> float:
    from lora_rl_plugins.kl.measure import measure_kl

    sums = measure_kl(model, ids, attention, mask)
    return sums.kl / sums.tokens


def _run(method: str) -> dict[str, float]:
    model, ids, attention, mask = _setup()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    value = {"naive": _naive, "chunked": _chunked}[method](model, ids, attention, mask)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kl_mean": value, "peak_growth_mib": (peak - before) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/kl_memory.json")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = {}
    for method in ("naive", "chunked"):
        with context.Pool(1) as pool:
            results[method] = pool.apply(_run, (method,))
    naive, chunked = results["naive"], results["chunked"]
    logits_mib = BATCH * COMPLETION * VOCAB * 4 / 2**20
    rows = [
        [
            "naive (full logits, both policies)",
            f"{naive['peak_growth_mib']:,.0f}",
            f"{naive['seconds']:.2f}",
            f"{naive['kl_mean']:.6f}",
        ],
        [
            "lora_rl_plugins.measure_kl (chunked)",
            f"{chunked['peak_growth_mib']:,.0f}",
            f"{chunked['seconds']:.2f}",
            f"{chunked['kl_mean']:.6f}",
        ],
    ]
    ratio = chunked["peak_growth_mib"] / max(naive["peak_growth_mib"], 1e-9)
    report = (
        f"Machine: {machine()}. Vocabulary {VOCAB:,}, {BATCH} x ({PROMPT} + {COMPLETION}) tokens; one float32 "
        f"logits tensor of the completions is {logits_mib:,.0f} MiB.\n\n"
        + markdown_table(["method", "peak memory growth (MiB)", "seconds", "KL mean (nats/token)"], rows)
        + f"\n\nmemory ratio chunked / naive: {ratio:.2f}\n"
    )
    print(report)
    save_result(args.out, "kl_memory", MEASURES, {"machine": machine(), "results": results, "markdown": report})


if __name__ == "__main__":
    main()
