"""Adapter capacity in bits and the smallest LoRA rank that holds a number of bits: pure functions.

The seed rule (Li, "Information Bandwidth in RL", §4.4; docs/theory.md §2): a rank-r adapter on
one d x d layer has 2rd parameters, 64·r·d bits at FP32; choose the smallest r with 64·r·d >= bits.
General form (docs/theory.md §2): params(r) = r · Σ_m E_m·(d_in,m + d_out,m)·r_m/r over the adapted
matrices m (E_m experts, r_m the matrix's effective rank at adapter rank r: 2r for PEFT's fused
``gate_up_proj``) plus the parameters of matrices whose rank ``rank_pattern`` fixes;
capacity(r) = bits_per_param · params(r). bits_per_param = 32 is the seed rule's storage view;
~2 is the knowledge-capacity view (Allen-Zhu & Li, arXiv 2404.05405).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "DEFAULT_BITS_PER_PARAM",
    "KNOWLEDGE_BITS_PER_PARAM",
    "adapter_capacity_bits",
    "params_per_rank",
    "seed_rule_rank",
    "smallest_rank",
]

#: FP32 storage: the seed rule 64·r·d = 32 bits × 2rd parameters.
DEFAULT_BITS_PER_PARAM = 32.0
#: Knowledge capacity of language models, ~2 bits per parameter (Allen-Zhu & Li 2024).
KNOWLEDGE_BITS_PER_PARAM = 2.0


def params_per_rank(shapes: Iterable[tuple[int, int]]) -> int:
    """Σ_m (d_in,m + d_out,m): LoRA parameters per unit of rank over the adapted matrices."""
    total = 0
    for d_in, d_out in shapes:
        if d_in <= 0 or d_out <= 0:
            raise ValueError(f"matrix dimensions must be positive, got ({d_in}, {d_out})")
        total += d_in + d_out
    return total


def adapter_capacity_bits(trainable_params: int, bits_per_param: float = DEFAULT_BITS_PER_PARAM) -> float:
    """capacity = bits_per_param · trainable LoRA parameters (an upper bound on storable bits)."""
    if bits_per_param <= 0:
        raise ValueError(f"bits_per_param must be positive, got {bits_per_param!r}")
    return bits_per_param * trainable_params


def smallest_rank(
    bits: float,
    per_rank_params: float,
    bits_per_param: float = DEFAULT_BITS_PER_PARAM,
    fixed_params: int = 0,
) -> int:
    """Smallest r >= 1 with bits_per_param · (r · per_rank_params + fixed_params) >= bits.

    ``per_rank_params``: parameters per unit of the adapter's rank (``AdapterSummary.params_per_rank``);
    ``fixed_params``: parameters that do not grow with r (matrices at an absolute ``rank_pattern`` rank).

    Raises:
        ValueError: ``per_rank_params`` or ``bits_per_param`` is not positive, or ``bits`` is negative or NaN.
    """
    if not per_rank_params > 0:
        raise ValueError(f"per_rank_params must be positive, got {per_rank_params!r}")
    if bits_per_param <= 0:
        raise ValueError(f"bits_per_param must be positive, got {bits_per_param!r}")
    if bits < 0 or math.isnan(bits):
        raise ValueError(f"bits must be a non-negative number, got {bits!r}")
    return max(1, math.ceil((bits / bits_per_param - fixed_params) / per_rank_params))


def seed_rule_rank(bits: float, hidden_size: int) -> int:
    """The seed rule ([Li] §4.4): the smallest r with 64·r·d >= bits for one d x d matrix."""
    return smallest_rank(bits, params_per_rank([(hidden_size, hidden_size)]), DEFAULT_BITS_PER_PARAM)
