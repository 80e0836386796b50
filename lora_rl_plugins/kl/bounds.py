"""Rank-dependent bounds on the KL between a LoRA policy and its reference (docs/theory.md §3, derived).

Notation: reference logits z(s), updated logits z(s) + δ(s); pi = softmax(logits / T).

* Hoeffding certificate, per state: KL <= (max_a δ_a − min_a δ_a)² / (8 T²), both directions.
* Single layer (the setting of [Rottman]): pi(a|s) = softmax(W h(s)), W = W0 + γ B A, ||h(s)|| <= H:
  sup_s KL <= (γ² H² / (4 T²)) · ||B A||_2².
* ||B A||_2² = λ_max((BᵀB)(AAᵀ)) and ||B A||_F² = tr((BᵀB)(AAᵀ)): r x r products only;
  ||B A||_F <= √r ||B A||_2.

torch is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "UpdateNorms",
    "expert_update_norms",
    "hoeffding_certificate",
    "many_update_norms",
    "single_layer_kl_bound",
    "update_norms",
]


@dataclass(frozen=True)
class UpdateNorms:
    """Norms of one module's LoRA update γ·B·A."""

    spectral: float
    """γ ||B A||_2."""
    frobenius: float
    """γ ||B A||_F."""
    rank: int


def update_norms(lora_b: Any, lora_a: Any, scaling: float) -> UpdateNorms:
    """γ‖BA‖₂ and γ‖BA‖_F from B (d_out x r) and A (r x d_in), via r x r products (float64)."""
    return many_update_norms([(lora_b, lora_a, scaling)])[0]


def many_update_norms(factors: list[tuple[Any, Any, float]]) -> list[UpdateNorms]:
    """``update_norms`` of every (B, A, γ) in ``factors``, in order: the modules whose B and A have the same
    shapes are stacked and computed in one batched product and one batched eigenvalue call (the same
    float64 r x r products: ‖BA‖₂² = λ_max((BᵀB)(AAᵀ)), ‖BA‖_F² = tr((BᵀB)(AAᵀ)); the eigenvalues are real and
    >= 0, a product of two PSD matrices). A model's hundreds of adapted modules fall into a few shapes."""
    import torch

    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for i, (b, a, _) in enumerate(factors):
        groups.setdefault((tuple(b.shape), tuple(a.shape)), []).append(i)
    results: list[UpdateNorms | None] = [None] * len(factors)
    for indices in groups.values():
        b = torch.stack([factors[i][0].detach().reshape(factors[i][0].shape[0], -1) for i in indices])
        a = torch.stack([factors[i][1].detach().reshape(factors[i][1].shape[0], -1) for i in indices])
        b, a = b.to(torch.float64), a.to(torch.float64)
        product = (b.transpose(-1, -2) @ b) @ (a @ a.transpose(-1, -2))  # (n, r, r)
        rank = int(a.shape[1])
        if rank:
            spectral_sq = torch.linalg.eigvals(product).real.clamp_min(0.0).amax(dim=-1).tolist()
        else:
            spectral_sq = [0.0] * len(indices)
        frobenius_sq = torch.diagonal(product, dim1=-2, dim2=-1).sum(-1).clamp_min(0.0).tolist()
        for i, s, f in zip(indices, spectral_sq, frobenius_sq, strict=True):
            gamma = abs(factors[i][2])
            results[i] = UpdateNorms(gamma * s**0.5, gamma * f**0.5, rank)
    return [r for r in results if r is not None]


def expert_update_norms(lora_b: Any, lora_a: Any, scaling: float, experts: int) -> list[UpdateNorms]:
    """γ‖B_e A_e‖₂ and γ‖B_e A_e‖_F of every expert e of a fused-expert LoRA (PEFT ``ParamWrapper``), batched.

    ``lora_a`` [r·E, d_in] and ``lora_b`` [d_out, r·E] are the stacked factors; expert e uses A rows
    e·r..(e+1)·r−1 and B columns e, e+E, ... (PEFT's ``get_delta_weight``: A.reshape(E, r, in),
    B.reshape(out, r, E)); r x r products per expert, float64.
    """
    import torch

    a = lora_a.detach().to(torch.float64).reshape(experts, -1, lora_a.shape[-1])  # (E, r, in)
    b = lora_b.detach().to(torch.float64).reshape(lora_b.shape[0], -1, experts).permute(2, 0, 1).contiguous()
    product = (b.transpose(-1, -2) @ b) @ (a @ a.transpose(-1, -2))  # (E, r, r)
    spectral_sq = torch.linalg.eigvals(product).real.clamp_min(0.0).amax(dim=-1)
    frobenius_sq = torch.diagonal(product, dim1=-2, dim2=-1).sum(-1).clamp_min(0.0)
    rank = int(a.shape[1])
    return [
        UpdateNorms(abs(scaling) * float(s) ** 0.5, abs(scaling) * float(f) ** 0.5, rank)
        for s, f in zip(spectral_sq.tolist(), frobenius_sq.tolist(), strict=True)
    ]


def single_layer_kl_bound(update_spectral: float, feature_norm: float, temperature: float = 1.0) -> float:
    """sup_s KL <= (γ‖BA‖₂)² H² / (4 T²) for an adapted output layer with features ||h(s)|| <= H."""
    return (update_spectral * feature_norm) ** 2 / (4.0 * temperature**2)


def hoeffding_certificate(delta: Any, dim: int = -1) -> Any:
    """(max δ − min δ)² / 8 along ``dim``: a bound on KL in both directions for log-probability shifts δ."""
    spread = delta.amax(dim=dim) - delta.amin(dim=dim)
    return spread.square() / 8.0
