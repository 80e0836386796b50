"""KL-free training: no reference model, no reference forward pass, the KL monitor as guard rail.

TRL skips the reference entirely when ``beta == 0.0`` (its default since TRL PR #3516);
Unsloth resolves an unset beta to 0.001 unless ``loss_type`` is "dapo" or "dr_grpo", so it must be
set to 0.0 explicitly (docs/theory.md §4). ``check_kl_free`` refuses every setting that contradicts it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KLFreeError", "check_kl_free"]


class KLFreeError(ValueError):
    """A setting contradicts KL-free training."""


def check_kl_free(
    *,
    beta: float | None,
    sync_ref_model: bool = False,
    reference_model: Any = None,
    reference_adapter: bool = False,
) -> None:
    """Raise ``KLFreeError`` listing every setting that contradicts KL-free training, with its fix."""
    problems = []
    if beta is None:
        problems.append(
            "beta is unset: Unsloth then resolves it to 0.001 unless loss_type is 'dapo' or 'dr_grpo'. "
            "Set beta=0.0 in the GRPO config."
        )
    elif beta != 0.0:
        problems.append(f"beta={beta} adds a KL penalty toward a reference model. Set beta=0.0 in the GRPO config.")
    if sync_ref_model:
        problems.append(
            "sync_ref_model=True keeps updating a reference model that KL-free training does not have. "
            "Set sync_ref_model=False."
        )
    if reference_model is not None:
        problems.append(
            "the trainer already built a reference model (its config had beta > 0 when it was created). "
            "Create the trainer with beta=0.0."
        )
    if reference_adapter:
        problems.append(
            "the model carries a frozen 'ref' adapter (TRL adds it for a pre-trained adapter when beta > 0). "
            "Create the trainer with beta=0.0."
        )
    if problems:
        raise KLFreeError(
            "kl_free=True contradicts these settings:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )
