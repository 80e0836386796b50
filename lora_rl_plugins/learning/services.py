"""The learning plugin's services (``plugin.services``): the informative prompt sampler and the
after-generation group filter. Each keeps its own run state, saved inside the learning plugin's."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ..plugin.base import WarnOnce
from ..plugin.collective import Collective
from ..plugin.grpo import Advantages, AdvantageSettings
from .config import FILTER_TOTALS, LearningConfig
from .filtering import GroupFilter, check_filterable
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

    def new_epoch(self) -> None:
        """A trainer that re-iterates its sampler from the epoch start on resume (TRL) calls this when it
        starts iterating: after a resume the epoch's recorded draws are replayed first (the trainer skips the
        batches it already trained), else the record starts afresh."""
        if self._resumed:
            self.cursor["replay"] = list(self.cursor["draws"])
            self._resumed = False
        else:
            self.cursor["draws"] = []

    def get_state(self) -> dict[str, Any]:
        return {"cursor": {**self.cursor, "draws": list(self.cursor["draws"])}, "skipped_prompts": self.skipped_prompts}

    def set_state(self, state: Mapping[str, Any]) -> None:
        cursor = state["cursor"]
        self.cursor = {
            "epoch": int(cursor["epoch"]),
            "position": int(cursor["position"]),
            "draws": list(cursor["draws"]),
        }
        self.skipped_prompts = int(state["skipped_prompts"])
        self._resumed = True


class GroupFiltering:
    """A ``BatchFilter``: per generation batch a ``GroupFilter`` (``filter_max_rounds`` extra rounds at most),
    and the run totals of what filtering cost (``learning/filter_*``)."""

    def __init__(self, config: LearningConfig, warned: WarnOnce) -> None:
        self.config, self.warned = config, warned
        self.advantage_settings = AdvantageSettings()
        self.totals = dict.fromkeys(FILTER_TOTALS, 0.0)

    def begin(self) -> GroupFilter:
        """A fresh filter for one generation batch.

        Raises:
            ValueError: the trainer's advantages are normalized over the batch (``check_filterable``).
        """
        check_filterable(self.advantage_settings)
        return GroupFilter(self.config.filter_max_rounds)

    def zero_information(self, advantages: Advantages) -> list[bool]:
        """Per group of one round: whether the trainer's advantages are all zero."""
        return advantages.zero_groups()

    def done(self, batch: GroupFilter, group_size: int, seconds: float, collective: Collective | None = None) -> None:
        """Add one batch's filter counts to the run totals; warn once when slots stayed without information.

        ``seconds``: this process's wall seconds in refill rounds; with ``collective`` (every process must
        call this once per batch) the slowest process's, so the totals are the same on every process."""
        for name, value in batch.metrics(group_size).items():
            self.totals[name] += value
        if collective is not None:
            seconds = collective.max([float(seconds)])[0]
        self.totals["seconds"] += seconds
        if batch.empty:
            self.warned.warn(
                "filter_unfilled",
                f"lora_rl_plugins: sampling='filter' kept {batch.empty} group(s) without information after "
                f"filter_max_rounds={self.config.filter_max_rounds} refill rounds (counted in "
                "learning/filter_unfilled_groups); raise filter_max_rounds, or the prompts are mostly solved or "
                "unsolved (see learning/solved_frac).",
            )
