"""The learning plugin's services (``plugin.services``): the informative prompt sampler and the
after-generation group filter. Each keeps its own run state, saved inside the learning plugin's."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ..bandwidth.advantages import batch_advantages
from ..plugin.base import WarnOnce
from ..plugin.collective import Collective
from ..plugin.events import RolloutsScored
from ..plugin.grpo import AdvantageSettings
from .config import FILTER_TOTALS, LearningConfig
from .filtering import GroupFilter, check_filterable, hopeless_groups
from .ledger import PromptLedger
from .sampling import InformativeSelector

__all__ = ["GroupFiltering", "InformativeSampling"]


class InformativeSampling:
    """A ``PromptSampler``: draws each batch's prompts, skipping those that taught nothing lately (docs/theory.md §8).

    Shares the learning plugin's ledger; its position (``cursor``) and the prompts it skipped are
    part of the learning plugin's state, so a resumed run draws the same prompts.
    """

    def __init__(self, ledger: PromptLedger, config: LearningConfig) -> None:
        self.ledger, self.config = ledger, config
        self.selector: InformativeSelector | None = None
        self.cursor: dict[str, Any] = {"epoch": 0, "position": 0, "draws": []}
        self.skipped_prompts = 0
        self._resumed = False

    def bind(self, key_of: Callable[[int], Hashable], size: int, seed: int) -> None:
        """Draw from ``size`` prompts keyed by ``key_of(index)`` (shares the ledger)."""
        self.selector = InformativeSelector(
            self.ledger,
            key_of,
            size,
            skip_after=self.config.skip_after,
            revisit=self.config.revisit,
            seed=seed,
            skip_unsolved=self.config.skip_unsolved,
        )

    def draw(self, count: int, shuffle: bool = True) -> list[int]:
        """The next ``count`` prompt indices of the informative stream (replaying, after a resume, the draws
        the trainer skips again), recording the draw so a resume reproduces it.

        Raises:
            RuntimeError: ``bind`` was not called.
        """
        if self.selector is None:
            raise RuntimeError("informative sampling has no prompts: the integration must call bind()")
        replay = self.cursor.get("replay")
        if replay:
            chosen, self.cursor["replay"] = replay[:count], replay[count:]
            if len(chosen) == count:
                return chosen
        before = self.selector.skipped
        chosen = self.selector.draw(count, self.cursor, shuffle)
        self.skipped_prompts += self.selector.skipped - before
        self.cursor["draws"] = (list(self.cursor["draws"]) + chosen)[-4 * self.selector.size :]
        return chosen

    @property
    def resuming(self) -> bool:
        """Whether a restored state (``set_state``) holds draws of an epoch not yet restarted (a fresh run's
        callback may restore an empty state: nothing to replay)."""
        return self._resumed and bool(self.cursor["draws"])

    def new_epoch(
        self, order: list[int] | None = None, *, sampler_state: str | None = None, replay: bool = True
    ) -> None:
        """A trainer that re-iterates its sampler from the epoch start on resume (TRL) calls this when it
        starts iterating: after a resume the epoch's recorded draws are replayed first (the trainer skips the
        batches it already trained; ``replay=False`` when the recorded epoch was complete), else the record
        starts afresh.

        ``order``: the trainer's own order of this epoch (distinct dataset indices): the stream the selector
        draws from (skipping only within it). ``sampler_state``: the trainer sampler's generator state at the
        epoch's start (opaque text, saved with the cursor so a resume can restore it).
        """
        if order is not None and self.selector is not None:
            self.selector.use_stream(order)
        if self.resuming and replay:
            self.cursor["replay"] = list(self.cursor["draws"])
            self._resumed = False
            return
        self._resumed = False
        self.cursor["draws"] = []
        if order is not None:
            if "sampler_state" in self.cursor:  # not the run's first epoch: the trainer's next epoch starts
                self.cursor["epoch"] += 1
                self.cursor["position"] = 0
            self.cursor["sampler_state"] = sampler_state

    def get_state(self) -> dict[str, Any]:
        return {"cursor": {**self.cursor, "draws": list(self.cursor["draws"])}, "skipped_prompts": self.skipped_prompts}

    def set_state(self, state: Mapping[str, Any]) -> None:
        cursor = state["cursor"]
        self.cursor = {
            "epoch": int(cursor["epoch"]),
            "position": int(cursor["position"]),
            "draws": list(cursor["draws"]),
        }
        if "sampler_state" in cursor:
            self.cursor["sampler_state"] = cursor["sampler_state"]
        self.skipped_prompts = int(state["skipped_prompts"])
        self._resumed = True


class GroupFiltering:
    """A ``BatchFilter``: per generation batch a ``GroupFilter`` (``filter_max_rounds`` extra rounds at most),
    and the run totals of what filtering cost (``learning/filter_*``).

    Refilling stops early for slots that cannot become informative (``filtering.hopeless_groups``): no
    scored rollout, or a prompt the shared ledger has seen at least ``skip_after`` times without signal."""

    def __init__(self, config: LearningConfig, warned: WarnOnce, ledger: PromptLedger) -> None:
        self.config, self.warned, self.ledger = config, warned, ledger
        self.advantage_settings = AdvantageSettings()
        self.totals = dict.fromkeys(FILTER_TOTALS, 0.0)
        self._keys: list[Hashable] = []

    def begin(self) -> GroupFilter:
        """A fresh filter for one generation batch.

        Raises:
            ValueError: the trainer's advantages are normalized over the batch (``check_filterable``).
        """
        check_filterable(self.advantage_settings)
        return GroupFilter(self.config.filter_max_rounds)

    def offer_round(self, batch: GroupFilter, scored: RolloutsScored) -> None:
        """Offer one freshly generated and scored round to ``batch``: its zero-information groups (the trainer's
        advantages) and, per group, why it cannot become informative (``filtering.hopeless_groups``). Call after
        the round's ``on_rollouts_scored`` (the ledger then holds its visit).

        Raises:
            ValueError: a round with another number of groups than the batch's first.
        """
        zero = batch_advantages(scored, self.advantage_settings).zero_groups()
        self._keys = list(scored.prompt_keys) if scored.prompt_keys is not None else []
        never_varied = self._never_varied(scored.group_size, len(zero))
        batch.offer(zero, hopeless_groups(scored.rewards, scored.group_size, never_varied))

    def _never_varied(self, group_size: int, groups: int) -> list[bool] | None:
        """Per group of the latest round: whether its prompt has had no signal at any of at least ``skip_after``
        visits (refill rounds included) in the ledger; None without prompt keys for every rollout."""
        keys = self._keys
        if len(keys) != groups * group_size:
            return None  # no keys (or another batch's): judge by the rewards only
        flags = []
        for first in range(0, len(keys), group_size):
            entry = self.ledger.get(keys[first])
            flags.append(entry is not None and entry.visits >= self.config.skip_after and entry.signal_bits == 0.0)
        return flags

    def done(self, batch: GroupFilter, group_size: int, seconds: float, collective: Collective | None = None) -> None:
        """Add one batch's filter counts to the run totals; warn once per cause when slots stayed without
        information (no scored rollout, a prompt that never varied, the round cap).

        ``seconds``: this process's wall seconds in refill rounds; with ``collective`` (every process must
        call this once per batch) the slowest process's, so the totals are the same on every process."""
        for name, value in batch.metrics(group_size).items():
            self.totals[name] += value
        if collective is not None:
            seconds = collective.max([float(seconds)])[0]
        self.totals["seconds"] += seconds
        causes = batch.causes()
        rounds = f"after {batch.extra_rounds} refill round(s)"
        if causes.get("unscored"):
            self.warned.warn(
                "filter_unscored",
                f"lora_rl_plugins: sampling='filter' kept {causes['unscored']} group(s) in which no rollout has a "
                f"reward (every reward function returned None/NaN) and stopped refilling them {rounds}: regenerating "
                "the same prompt asks the same reward functions again. Check that the reward functions score these "
                "prompts (counted in learning/filter_unfilled_groups and bandwidth/missing_rewards).",
            )
        if causes.get("never_varied"):
            self.warned.warn(
                "filter_never_varied",
                f"lora_rl_plugins: sampling='filter' kept {causes['never_varied']} group(s) whose prompts have never "
                f"varied ({self._never_varied_detail(batch, group_size)}: every rollout got the same reward at each "
                f"of at least skip_after={self.config.skip_after} visits) and stopped refilling them {rounds}; such "
                'prompts are better skipped before generation (sampling="informative") or removed from the data '
                "(counted in learning/filter_unfilled_groups).",
            )
        if causes.get("capped"):
            self.warned.warn(
                "filter_unfilled",
                f"lora_rl_plugins: sampling='filter' kept {causes['capped']} group(s) without information after "
                f"filter_max_rounds={self.config.filter_max_rounds} refill rounds (counted in "
                "learning/filter_unfilled_groups): their prompts did vary before or are new, so more rounds may fill "
                "them; raise filter_max_rounds.",
            )

    def _never_varied_detail(self, batch: GroupFilter, group_size: int) -> str:
        """'3 solved, 1 unsolved' for the never-varied slots' prompts, by their latest outcome in the ledger."""
        tally: dict[str, int] = {}
        for g, cause in enumerate(batch.hopeless):
            if cause == "never_varied" and batch.rounds[g] is None and g * group_size < len(self._keys):
                entry = self.ledger.get(self._keys[g * group_size])
                outcome = entry.last if entry is not None else "constant"
                tally[outcome] = tally.get(outcome, 0) + 1
        return ", ".join(f"{count} {outcome}" for outcome, count in sorted(tally.items()))
