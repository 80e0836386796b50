"""Exact KL measurement and the rank-dependent bounds (THEORY.md §3)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lora_rl_plugins.demo.model import build_tiny_model  # noqa: E402
from lora_rl_plugins.kl.bounds import hoeffding_certificate, single_layer_kl_bound, update_norms  # noqa: E402
from lora_rl_plugins.kl.measure import ReferencePolicy, measure_kl  # noqa: E402
from lora_rl_plugins.lora.adapters import NotALoraModelError  # noqa: E402


def lora_model(targets=("q_proj", "v_proj", "lm_head"), seed=0, r=4):
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    return peft.get_peft_model(build_tiny_model(seed=seed), config)


def batch(seed=1, rows=3, length=8, completion=4):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 14, (rows, length), generator=generator)
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # left padding
    mask = torch.ones(rows, completion)
    mask[1, -1] = 0  # a finished sequence
    return ids, attention, mask


def naive(model, ids, attention, mask, temperature=1.0, reference=None):
    """Full-logits reference implementation: the model's own forward().logits, float64 after them."""
    reference = reference or ReferencePolicy()
    c = mask.shape[1]
    with torch.no_grad():
        lp = torch.log_softmax(
            model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1].double() / temperature, -1
        )
        with reference.activate(model):
            lr = torch.log_softmax(
                model(input_ids=ids, attention_mask=attention).logits[:, -c - 1 : -1].double() / temperature, -1
            )
    kl = (lp.exp() * (lp - lr)).sum(-1)
    reverse = (lr.exp() * (lr - lp)).sum(-1)
    target = ids[:, -c:].unsqueeze(-1)
    ratio = (lr.gather(-1, target) - lp.gather(-1, target)).squeeze(-1)
    k3 = ratio.exp() - ratio - 1
    cert = hoeffding_certificate(lp - lr)
    n = mask.sum()
    return {
        "kl": float((kl * mask).sum() / n),
        "reverse": float((reverse * mask).sum() / n),
        "k3": float((k3 * mask).sum() / n),
        "cert": float((cert * mask).sum() / n),
        "max": float((kl * mask).max()),
        "seq": float((kl * mask).sum(-1).mean()),
    }


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 37, 2**24])
def test_measurement_equals_full_logits(temperature, chunk) -> None:
    model = lora_model()
    ids, attention, mask = batch()
    sums = measure_kl(model, ids, attention, mask, temperature=temperature, max_chunk_elements=chunk)
    expected = naive(model, ids, attention, mask, temperature)
    assert sums.tokens == mask.sum()
    assert sums.kl / sums.tokens == pytest.approx(expected["kl"], rel=1e-5)
    assert sums.reverse_kl / sums.tokens == pytest.approx(expected["reverse"], rel=1e-5)
    assert sums.k3 / sums.tokens == pytest.approx(expected["k3"], rel=1e-5)
    assert sums.certificate / sums.tokens == pytest.approx(expected["cert"], rel=1e-5)
    assert sums.kl_max == pytest.approx(expected["max"], rel=1e-5)
    assert sums.sequence_kl / sums.sequences == pytest.approx(expected["seq"], rel=1e-5)
    assert sums.certificate >= sums.kl and sums.certificate >= sums.reverse_kl
    assert model.training  # restored


def test_fresh_adapter_has_zero_kl_and_grads_stay_off() -> None:
    model = peft.get_peft_model(build_tiny_model(), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    ids, attention, mask = batch()
    sums = measure_kl(model, ids, attention, mask)
    assert sums.kl == pytest.approx(0.0, abs=1e-9) and sums.k3 == pytest.approx(0.0, abs=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_reference_adapter_and_snapshot_modes() -> None:
    model = lora_model(targets=("q_proj", "lm_head"))
    ids, attention, mask = batch()
    snapshot = ReferencePolicy("snapshot")
    snapshot.take_snapshot(model)
    assert measure_kl(model, ids, attention, mask, reference=snapshot).kl == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():  # train the adapter a little: KL from the snapshot appears
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))
    before = {n: p.clone() for n, p in model.named_parameters()}
    moved = measure_kl(model, ids, attention, mask, reference=snapshot)
    assert moved.kl > 0
    assert moved.kl / moved.tokens == pytest.approx(naive(model, ids, attention, mask, reference=snapshot)["kl"])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # weights swapped back
    # TRL's frozen "ref" adapter
    model.add_adapter("ref", model.peft_config["default"])
    model.set_adapter("default")
    ref = ReferencePolicy("adapter", "ref")
    sums = measure_kl(model, ids, attention, mask, reference=ref)
    assert sums.kl / sums.tokens == pytest.approx(naive(model, ids, attention, mask, reference=ref)["kl"], rel=1e-5)
    assert model.active_adapter == "default"


def test_model_without_lora_is_a_clear_error() -> None:
    with pytest.raises(NotALoraModelError, match="does not make a silent full copy"):
        ReferencePolicy("snapshot").take_snapshot(build_tiny_model())
    ids, attention, mask = batch()
    with pytest.raises(NotALoraModelError, match="has none"):
        measure_kl(build_tiny_model(), ids, attention, mask)


# -- bounds ---------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    d_out=st.integers(2, 40),
    d_in=st.integers(2, 24),
    rank=st.integers(1, 8),
    alpha=st.floats(0.1, 64.0),
    rslora=st.booleans(),
    temperature=st.floats(0.3, 2.0),
    seed=st.integers(0, 10_000),
)
def test_single_layer_bound_never_below_exact_kl(d_out, d_in, rank, alpha, rslora, temperature, seed) -> None:
    """pi = softmax((W0 + γBA) h / T): for every state, KL (both directions) <= (γ‖BA‖₂)²H²/(4T²)."""
    generator = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d_out, d_in, generator=generator, dtype=torch.float64)
    b = torch.randn(d_out, rank, generator=generator, dtype=torch.float64) * 0.3
    a = torch.randn(rank, d_in, generator=generator, dtype=torch.float64) * 0.3
    gamma = alpha / math.sqrt(rank) if rslora else alpha / rank
    h = torch.randn(16, d_in, generator=generator, dtype=torch.float64)
    feature_norm = float(h.norm(dim=-1).max())
    log_ref = torch.log_softmax(h @ w0.T / temperature, -1)
    log_new = torch.log_softmax(h @ (w0 + gamma * b @ a).T / temperature, -1)
    forward = (log_new.exp() * (log_new - log_ref)).sum(-1)
    reverse = (log_ref.exp() * (log_ref - log_new)).sum(-1)
    norms = update_norms(b, a, gamma)
    bound = single_layer_kl_bound(norms.spectral, feature_norm, temperature)
    assert float(forward.max()) <= bound * (1 + 1e-9) + 1e-12
    assert float(reverse.max()) <= bound * (1 + 1e-9) + 1e-12
    certificate = hoeffding_certificate(log_new - log_ref)
    assert bool((forward <= certificate + 1e-12).all()) and bool((reverse <= certificate + 1e-12).all())
    assert norms.spectral == pytest.approx(gamma * float(torch.linalg.matrix_norm(b @ a, ord=2)), rel=1e-7)
    assert norms.frobenius == pytest.approx(gamma * float(torch.linalg.matrix_norm(b @ a)), rel=1e-7)
    assert norms.frobenius <= math.sqrt(rank) * norms.spectral * (1 + 1e-9)


def test_bound_is_tight_for_small_two_point_shifts() -> None:
    """Hoeffding is tight for small shifts on two actions (THEORY.md §3)."""
    delta = torch.tensor([0.01, -0.01], dtype=torch.float64)
    log_ref = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    log_new = torch.log_softmax(log_ref + delta, -1)
    kl = float((log_new.exp() * (log_new - log_ref)).sum())
    assert kl / float(hoeffding_certificate(log_new - log_ref)) == pytest.approx(1.0, abs=1e-3)


def test_batched_update_norms_match_each_modules_matrix_norms() -> None:
    """The monitor computes every module's norms in one batch per shape: each equals float64 matrix norms of γBA."""
    from lora_rl_plugins.kl.bounds import many_update_norms

    generator = torch.Generator().manual_seed(3)
    shapes = [(12, 4, 20), (12, 4, 20), (7, 4, 20), (12, 2, 9), (12, 4, 20)]  # (d_out, r, d_in), repeated shapes
    factors = [
        (torch.randn(o, r, generator=generator), torch.randn(r, i, generator=generator), 0.5 + k)
        for k, (o, r, i) in enumerate(shapes)
    ]
    for (b, a, gamma), norms in zip(factors, many_update_norms(factors), strict=True):
        delta = gamma * b.double() @ a.double()
        assert norms.spectral == pytest.approx(float(torch.linalg.matrix_norm(delta, ord=2)), rel=1e-9)
        assert norms.frobenius == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-9)
        assert norms.rank == a.shape[0]
