"""The options every integration accepts, under the same names, and the plugin host they build."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .builtin import BandwidthConfig, KLMonitorConfig, default_builtins
from .capacity import DEFAULT_BITS_PER_PARAM
from .plugins import PluginHost, make_plugin_manager

__all__ = ["PluginOptions"]

_KL_DEFAULTS = KLMonitorConfig()


@dataclass
class PluginOptions:
    """Options of ``LoraRLCallback`` (TRL and Lightning alike).

    Bandwidth (``BandwidthConfig``): reward_levels, reward_range, answer_extractor,
    answer_space_size, token_reward_levels, bits_per_param.
    KL monitor (``KLMonitorConfig``): kl_every, kl_max_sequences, kl_budget, on_budget,
    kl_penalty_beta, kl_reference; kl_free trains without a reference (the monitor stays on).
    vllm_serving: the vLLM settings the trained adapter will be served with.
    plugins, block, load_entry_points: extra plugins, names not to load, entry-point discovery.
    """

    reward_levels: int | None = None
    reward_range: tuple[float, float] | None = None
    answer_extractor: Callable[[Any], Hashable | None] | None = None
    answer_space_size: int | None = None
    token_reward_levels: int | None = None
    bits_per_param: float = DEFAULT_BITS_PER_PARAM
    kl_free: bool = False
    kl_every: int | None = None
    kl_max_sequences: int | None = None
    kl_budget: float | None = None
    on_budget: str = "warn"
    kl_penalty_beta: float = 0.04
    kl_reference: str = "auto"
    vllm_serving: Mapping[str, Any] | None = None
    plugins: Iterable[object] = field(default_factory=tuple)
    block: Iterable[str] = field(default_factory=tuple)
    load_entry_points: bool = True

    @property
    def kl_requested(self) -> bool:
        """The user asked for the KL monitor (KL-free mode, a budget, a cadence): no LoRA is then an error."""
        return self.kl_free or self.kl_budget is not None or self.kl_every is not None

    def build_host(self) -> PluginHost:
        """A plugin host with the configured built-ins, ``plugins`` and entry-point plugins."""
        bandwidth = BandwidthConfig(
            reward_levels=self.reward_levels,
            reward_range=self.reward_range,
            answer_extractor=self.answer_extractor,
            answer_space_size=self.answer_space_size,
            token_reward_levels=self.token_reward_levels,
            bits_per_param=self.bits_per_param,
        )
        kl_monitor = KLMonitorConfig(
            kl_every=self.kl_every or _KL_DEFAULTS.kl_every,
            kl_max_sequences=self.kl_max_sequences or _KL_DEFAULTS.kl_max_sequences,
            kl_budget=self.kl_budget,
            on_budget=self.on_budget,  # type: ignore[arg-type]
            penalty_beta=self.kl_penalty_beta,
            reference=self.kl_reference,  # type: ignore[arg-type]
        )
        builtins = default_builtins(bandwidth, self.vllm_serving, kl_monitor, kl_required=self.kl_requested)
        pm = make_plugin_manager(
            builtins, extra=self.plugins, block=self.block, load_entry_points=self.load_entry_points
        )
        return PluginHost(pm)
