"""TRL ``GRPOTrainer``'s generation plumbing for ``sampling="filter"`` and informative sampling: what the
TRL adapter (``integrations.trl``) wraps around ``_generate_and_score_completions`` and
``_get_train_sampler``. The decisions (which groups to keep, which prompts to draw) are the services'
(``plugin.services``); here only TRL's tensors are regenerated, padded and merged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lora_rl_plugins.bridge.trl_contract import check_informative_sampling
from lora_rl_plugins.learning.ledger import prompt_key
from lora_rl_plugins.learning.sampling import InformativeRepeatSampler
from lora_rl_plugins.plugin.collective import Collective
from lora_rl_plugins.plugin.events import RolloutsScored
from lora_rl_plugins.plugin.services import BatchFilter, PromptSampler

__all__ = ["ROW_TENSORS", "filter_groups", "install_prompt_sampler", "merge_generation_rounds"]

#: Per-row tensors of ``GRPOTrainer._generate_and_score_completions``' output (TRL 1.16): the side their
#: second dimension is padded on and the padding value (None: the pad token id), or no padding (1-D).
ROW_TENSORS: dict[str, tuple[str, float | None] | None] = {
    "prompt_ids": ("left", None),
    "prompt_mask": ("left", 0),
    "completion_ids": ("right", None),
    "completion_mask": ("right", 0),
    "advantages": None,
    "old_per_token_logps": ("right", 0.0),
    "ref_per_token_logps": ("right", 0.0),
    "sampling_per_token_logps": ("right", 0.0),
    "importance_sampling_ratio": ("right", 1.0),
    "tool_mask": ("right", 1),
}


def merge_generation_rounds(outputs: list[dict[str, Any]], rounds: list[int], pad_token_id: int) -> dict[str, Any]:
    """One output dict whose row i is row i of ``outputs[rounds[i]]`` (each a ``_generate_and_score_completions``
    output of the same inputs), every per-row tensor padded to the widest round on TRL's side for it.
    ``num_items_in_batch`` is left to the caller (a collective).

    Raises:
        ValueError: an output key this merge does not know (multimodal inputs: turn ``sampling="filter"`` off).
    """
    import torch

    unknown = sorted(set(outputs[0]) - set(ROW_TENSORS) - {"num_items_in_batch"})
    if unknown:
        raise ValueError(
            f"sampling='filter' cannot merge TRL's generation output key(s) {', '.join(unknown)} (multimodal or a "
            "newer TRL): turn sampling='filter' off for this run"
        )
    index = torch.tensor(rounds)
    merged: dict[str, Any] = dict(outputs[0])
    for key, padding in ROW_TENSORS.items():
        if key not in outputs[0]:
            continue
        tensors = [out[key] for out in outputs]
        if padding is not None:
            side, value = padding
            width = max(t.size(1) for t in tensors)
            fill = pad_token_id if value is None else value
            padded = []
            for t in tensors:
                extra = torch.full((t.size(0), width - t.size(1)), fill, dtype=t.dtype, device=t.device)
                padded.append(torch.cat([extra, t] if side == "left" else [t, extra], dim=1))
            tensors = padded
        stacked = torch.stack(tensors)  # [rounds, rows, ...]
        rows = torch.arange(stacked.size(1), device=stacked.device)
        merged[key] = stacked[index.to(stacked.device), rows]
    return merged


def filter_groups(
    trainer: Any,
    service: BatchFilter,
    generate: Callable[[], dict[str, Any]],
    output: dict[str, Any],
    scored: Callable[[], RolloutsScored | None],
    collective: Collective,
) -> dict[str, Any]:
    """``sampling="filter"``: while the filter has slots without information that may still get some and rounds
    left, generate the same
    inputs again (``generate()``; TRL refills by resampling the dropped prompts), then take each local row from
    the round the filter chose for its group. ``scored()`` is the latest round's scored batch (its advantages
    decide). Every process runs the same rounds: the decisions come from the gathered rewards."""
    group_size = trainer.num_generations
    batch = service.begin()
    service.offer_round(batch, scored())  # type: ignore[arg-type]
    started = time.perf_counter()
    outputs = [output]
    while batch.needs_refill():
        outputs.append(generate())
        service.offer_round(batch, scored())  # type: ignore[arg-type]
    rows = len(output["advantages"])
    rounds = batch.row_rounds(trainer.accelerator.process_index * rows, rows, group_size)
    if batch.extra_rounds:  # global (not this process's rows): every process makes the same gather
        tokenizer = getattr(trainer, "_tokenizer", None) or trainer.processing_class
        output = merge_generation_rounds(outputs, rounds, tokenizer.pad_token_id)
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        output["num_items_in_batch"] = trainer.accelerator.gather(loss_mask.sum()).sum()  # as TRL computes it
    service.done(batch, group_size, time.perf_counter() - started, collective)
    return output


def install_prompt_sampler(trainer: Any, sampler: PromptSampler) -> None:
    """Draw each generation batch's prompts through ``sampler`` (informative sampling): TRL's ``RepeatSampler``
    layout (each prompt ``num_generations`` times, each chunk repeated for ``steps_per_generation`` ×
    ``num_iterations``), prompts chosen by the service.

    Raises:
        UnsupportedTRLError: the trainer's sampler is not one informative sampling can follow
            (``bridge.trl_contract.check_informative_sampling``).
    """
    check_informative_sampling(trainer)
    original = trainer._get_train_sampler

    def get_train_sampler(dataset: Any = None) -> Any:
        base = original(dataset)
        data = trainer.train_dataset if dataset is None else dataset
        sampler.bind(lambda index: prompt_key(data[index]["prompt"]), len(data), trainer.args.seed)
        at_epoch_end = lambda: float(trainer.state.epoch or 0).is_integer()  # noqa: E731 (transformers' rule)
        return InformativeRepeatSampler(base, sampler, at_epoch_end)

    trainer._get_train_sampler = get_train_sampler
