"""What the TRL integration relies on inside ``trl.GRPOTrainer``, checked when the callback is built.

The callback wraps two private methods and reads trainer attributes and output keys that TRL does
not promise to keep. Tested at both ends of ``SUPPORTED_TRL`` (CI runs the TRL integration tests
against TRL 1.6.0 and the newest 1.x); TRL 1.6.0-1.16 compute rewards and advantages with the same
code (the advantage block is byte-identical), so the numbers mean the same thing across the range.
Framework-free: it inspects the trainer object it is given.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from ..plugin.grpo import AdvantageSettings, GRPOSettings, SamplingSettings

__all__ = [
    "ADVANTAGE_METHOD",
    "SUPPORTED_TRL",
    "UnsupportedTRLError",
    "check_informative_sampling",
    "check_trainer_class",
    "check_trl_grpo_trainer",
    "grpo_settings",
    "trl_contract_problems",
]

#: The TRL releases the integration supports, as a pip specifier (lowest and highest are tested in CI).
SUPPORTED_TRL = ">=1.6,<2"
_LOWEST, _BELOW = (1, 6), (2, 0)

#: Methods the callback wraps, with the leading parameters it calls them with.
WRAPPED_METHODS = {
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_and_score_completions": ("inputs",),
}
#: Trainer attributes the callback reads.
ATTRIBUTES = (
    "accelerator",
    "num_generations",
    "reward_func_names",
    "reward_weights",
    "temperature",
    "beta",
    "num_iterations",
    "_metrics",
)
#: The method informative sampling wraps (called with an optional dataset, returns TRL's RepeatSampler).
SAMPLER_METHOD = "_get_train_sampler"
#: Keys the callback reads from ``_generate_and_score_completions``' output.
OUTPUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


class UnsupportedTRLError(RuntimeError):
    """The installed TRL is outside ``SUPPORTED_TRL`` or lacks an internal the callback relies on."""


#: The ``GRPOTrainer`` method in which TRL turns rewards into advantages (docs/theory.md §1).
ADVANTAGE_METHOD = "_generate_and_score_completions"

#: TRL online trainers that score rollouts with reward functions like ``GRPOTrainer`` but are not one, and why the
#: accounting (built on GRPOTrainer's advantages, docs/theory.md §1) would misdescribe them (TRL 1.16 sources).
_OTHER_TRAINERS = {
    "RLOOTrainer": (
        "RLOO subtracts beta·(Σ over the completion of log π_θ − log π_ref) from each reward before its advantages, "
        "so with beta > 0 a group of equal rewards still has non-zero advantages; it takes a leave-one-out baseline "
        "(r_i minus the mean of the other scored rollouts), may clip the rewards (reward_clip_range) and, with "
        "normalize_advantages=True, normalises the advantages over the whole batch, which moves a constant group "
        "off zero. bandwidth/zero_info_frac, the bits and sampling='filter' would then misdescribe its updates, and "
        "its `kl` is the mean of log π_θ − log π_ref (first order, can be negative), not GRPO's k3"
    ),
    "OnlineDPOTrainer": "Online DPO learns from preferences between pairs of completions, not group advantages",
    "SDPOTrainer": "SDPO computes its own advantages (self-distillation), not GRPO's group-normalised ones",
    "A2POTrainer": "A2PO computes its own advantages, not GRPO's group-normalised ones",
}


def _release(version: str) -> tuple[int, int] | None:
    match = re.match(r"^\s*v?(\d+)\.(\d+)", str(version))
    return (int(match.group(1)), int(match.group(2))) if match else None


def trl_contract_problems(trainer: Any, trl_version: str) -> list[str]:
    """Every reason the callback cannot trust ``trainer`` (a ``GRPOTrainer`` of TRL ``trl_version``); [] if none.

    Checks the version against ``SUPPORTED_TRL``, the wrapped methods and their parameters, the
    attributes read, and (where the method's source is available) that the output keys read appear
    in ``_generate_and_score_completions``.
    """
    problems = []
    release = _release(trl_version)
    if release is None or not _LOWEST <= release < _BELOW:
        problems.append(f"TRL {trl_version} is outside the supported range trl{SUPPORTED_TRL}")
    for name, expected in WRAPPED_METHODS.items():
        method = getattr(trainer, name, None)
        if not callable(method):
            problems.append(f"GRPOTrainer.{name} is missing")
            continue
        try:
            parameters = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            continue  # no signature to read (a C function or a wrapper): nothing more to check
        if parameters[: len(expected)] != expected:
            problems.append(f"GRPOTrainer.{name} takes {parameters}, expected {expected}")
    for name in ATTRIBUTES:
        if not hasattr(trainer, name):
            problems.append(f"GRPOTrainer has no attribute {name!r}")
    metrics = getattr(trainer, "_metrics", None)
    if metrics is not None and not (hasattr(metrics, "get") and metrics.get("train") is not None):
        problems.append("GRPOTrainer._metrics has no 'train' store")
    try:
        source = inspect.getsource(type(trainer)._generate_and_score_completions)
    except (AttributeError, OSError, TypeError):
        source = None
    if source is not None:
        missing = [key for key in OUTPUT_KEYS if f'"{key}"' not in source and f"'{key}'" not in source]
        if missing:
            problems.append(f"GRPOTrainer._generate_and_score_completions does not produce {missing}")
    return problems


def check_trl_grpo_trainer(trainer: Any, trl_version: str) -> None:
    """Refuse a TRL whose ``GRPOTrainer`` the callback cannot rely on.

    Raises:
        UnsupportedTRLError: the version is outside ``SUPPORTED_TRL`` or an internal is missing or
            changed; the message lists every problem and names the supported range.
    """
    problems = trl_contract_problems(trainer, trl_version)
    if problems:
        raise UnsupportedTRLError(
            "LoraRLCallback supports trl"
            + SUPPORTED_TRL
            + "; with TRL "
            + str(trl_version)
            + ": "
            + "; ".join(problems)
            + f". Install a supported TRL: pip install 'trl{SUPPORTED_TRL}'."
        )


def _defining_class(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO whose own ``__dict__`` defines ``name``."""
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _calls_super(method: Any, name: str) -> bool:
    """Whether ``method``'s source delegates to ``super().<name>`` (keeps the parent's computation)."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    return re.search(r"super\(\s*(\w+\s*,\s*\w+)?\s*\)\s*\.\s*" + re.escape(name) + r"\b", source) is not None


def check_trainer_class(trainer: Any, grpo_classes: tuple[type, ...]) -> None:
    """Accept ``trainer`` by class: a ``GRPOTrainer`` (any of ``grpo_classes``, e.g. ``trl.GRPOTrainer`` as bound
    now, which Unsloth replaces with its patched copy, and ``trl.trainer.grpo_trainer.GRPOTrainer``) or a subclass
    that keeps GRPOTrainer's advantage model: it inherits ``ADVANTAGE_METHOD`` from one of ``grpo_classes`` (or
    their bases: TRL's GMPOTrainer changes only the loss) or overrides it with a method that calls
    ``super().{ADVANTAGE_METHOD}``.

    Raises:
        TypeError: not a GRPOTrainer (RLOOTrainer and the other TRL online trainers that look alike get the reason
            their advantages differ), or a subclass that replaces the method computing the advantages.
    """
    cls = type(trainer)
    name = cls.__name__
    if not isinstance(trainer, grpo_classes):
        reason = _OTHER_TRAINERS.get(name)
        if reason is None:
            reason = next(
                (why for other, why in _OTHER_TRAINERS.items() if any(k.__name__ == other for k in cls.__mro__)), None
            )
        detail = f": {reason}" if reason else ""
        raise TypeError(
            f"LoraRLCallback needs a trl.GRPOTrainer (or a subclass that keeps its advantages, such as "
            f"trl.experimental.gmpo.GMPOTrainer), got {name}{detail}. Train with GRPOTrainer to use the callback, "
            "or leave the callback out for this trainer. Create the trainer first, then: "
            "trainer.add_callback(LoraRLCallback(trainer))."
        )
    owner = _defining_class(cls, ADVANTAGE_METHOD)
    grpo_lineage = {klass for base in grpo_classes for klass in base.__mro__}
    if owner is None or owner in grpo_lineage:
        return
    if _calls_super(vars(owner)[ADVANTAGE_METHOD], ADVANTAGE_METHOD):
        return
    raise TypeError(
        f"{owner.__name__} overrides GRPOTrainer.{ADVANTAGE_METHOD}, where TRL turns rewards into advantages, without "
        f"calling super().{ADVANTAGE_METHOD}: LoraRLCallback counts information from GRPOTrainer's advantages "
        "(docs/theory.md §1) and cannot tell whether yours are the same. Keep GRPOTrainer's advantage computation "
        f"(call super().{ADVANTAGE_METHOD}(inputs) and change its output only after), or leave the callback out."
    )


def check_informative_sampling(trainer: Any) -> None:
    """Refuse informative sampling where the trainer has no ``_get_train_sampler`` to wrap.

    Raises:
        UnsupportedTRLError: ``GRPOTrainer._get_train_sampler`` is missing (the message says to turn
            ``informative_sampling`` off).
    """
    if not callable(getattr(trainer, SAMPLER_METHOD, None)):
        raise UnsupportedTRLError(
            f"informative_sampling=True wraps GRPOTrainer.{SAMPLER_METHOD}, which this TRL does not have: turn "
            "informative_sampling off, or install a supported TRL: pip install 'trl" + SUPPORTED_TRL + "'."
        )


def grpo_settings(trainer: Any) -> GRPOSettings:
    """The typed GRPO settings (``RunStarted.grpo``) of a TRL ``GRPOTrainer`` or a subclass keeping its
    attributes (``AsyncGRPOTrainer``...): read from the trainer and its ``GRPOConfig``."""
    args = trainer.args
    advantage = {
        "scale_rewards": getattr(trainer, "scale_rewards", None),
        "aggregation": getattr(trainer, "multi_objective_aggregation", None),
    }
    weight_sync = "shared"
    if getattr(trainer, "use_vllm", False):
        weight_sync = {"server": "vllm_server", "colocate": "vllm_colocate"}.get(getattr(args, "vllm_mode", ""), "vllm")
    return GRPOSettings(
        advantage=AdvantageSettings(**{k: v for k, v in advantage.items() if v is not None}),
        sampling=SamplingSettings(
            temperature=float(trainer.temperature),
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            generation_kwargs=args.generation_kwargs,
        ),
        beta=float(trainer.beta),
        weight_sync=weight_sync,  # type: ignore[arg-type]
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else None,
        generation_batch_size=args.generation_batch_size,
        steps_per_generation=args.steps_per_generation,
        num_iterations=trainer.num_iterations,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )
