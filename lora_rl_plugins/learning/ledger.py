"""A per-prompt ledger: every prompt's visits, rewards and the signal it delivered (docs/theory.md §8).

Keys are stable on every process and across resume: the dataset index where the integration knows
it, else ``prompt_key(prompt)`` (a hash of the prompt's text or messages). The ledger is updated
from gathered ``RolloutsScored`` batches, so it is identical on every process. Memory is bounded:
past ``max_prompts`` entries the least recently visited prompt is evicted (with a one-time warning).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LedgerEntry", "PromptLedger", "classify_group", "prompt_key"]

#: Characters of a prompt's text kept for reports.
PREVIEW_CHARS = 80


def prompt_key(prompt: Any) -> str:
    """A stable key for a prompt: the first 16 hex digits of SHA-1 over its text (or, for a list of
    chat messages or any JSON-able value, over its canonical JSON). Same on every process and run."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _preview(prompt: Any) -> str:
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        text = str(prompt[-1].get("content", ""))
    else:
        text = str(prompt)
    return text[:PREVIEW_CHARS]


def classify_group(rewards: Iterable[float], top: float, bottom: float, zero_info: bool | None = None) -> str:
    """One visit's outcome from a group's combined rewards (NaN = unscored, ignored).

    "informative": the group moves the policy. With ``zero_info`` given (the bandwidth plugin's
    definition, docs/theory.md §1: are the advantages the trainer computes for the group all zero?
    ``bandwidth.advantages.Advantages.zero_groups``) that decides it; without it, at least two scored
    rewards differ (TRL's default advantages). A group that is not informative is "solved" (all
    equal to ``top``), "unsolved" (all equal to ``bottom``), "constant" (another value, or unequal
    rewards whose advantages are all zero) or "unscored" (fewer than 2 scored rollouts: no signal).
    When top == bottom (one reward value seen so far) a constant group counts as solved if its
    reward is > 0, else unsolved.
    """
    scored = [r for r in rewards if r == r]  # r == r: not NaN
    if zero_info is False:
        return "informative"
    if len(scored) < 2:
        return "unscored"
    if zero_info is None and max(scored) != min(scored):
        return "informative"
    if max(scored) != min(scored):
        return "constant"
    value = scored[0]
    if top == bottom:
        return "solved" if value > 0 else "unsolved"
    if value >= top:
        return "solved"
    if value <= bottom:
        return "unsolved"
    return "constant"


@dataclass
class LedgerEntry:
    """One prompt's record (all counts over the run)."""

    visits: int = 0
    reward_sum: float = 0.0
    """Σ over visits of the group's mean reward (reward mean per visit = reward_sum / visits)."""
    signal_bits: float = 0.0
    """Σ over visits of the group's signal estimate (bits; docs/theory.md §1)."""
    zero_streak: int = 0
    """Consecutive latest visits that delivered no signal (the trainer's advantages all zero)."""
    last: str = ""
    """The latest visit's outcome (``classify_group``)."""
    last_step: int = 0
    text: str = ""
    """The first characters of the prompt (for reports)."""

    @property
    def reward_mean(self) -> float:
        """Mean over visits of the group's mean reward (NaN before any visit)."""
        return self.reward_sum / self.visits if self.visits else float("nan")


class PromptLedger:
    """Per-prompt records keyed by ``Hashable`` keys, least recently visited evicted past ``max_prompts``.

    Raises:
        ValueError: ``max_prompts`` < 1.
    """

    def __init__(self, max_prompts: int = 100_000) -> None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
        self.max_prompts = max_prompts
        self.entries: OrderedDict[str, LedgerEntry] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Hashable) -> LedgerEntry | None:
        """The entry of ``key``, or None for a prompt never seen (or evicted)."""
        return self.entries.get(str(key))

    def visit(
        self, key: Hashable, *, outcome: str, reward_mean: float, bits: float, step: int, prompt: Any = None
    ) -> bool:
        """Record one visit (one group); returns True when an older entry was evicted to make room."""
        key = str(key)
        entry = self.entries.pop(key, None)
        evicted = False
        if entry is None:
            entry = LedgerEntry(text=_preview(prompt) if prompt is not None else "")
            if len(self.entries) >= self.max_prompts:
                self.entries.popitem(last=False)
                self.evicted += 1
                evicted = True
        entry.visits += 1
        if not math.isnan(reward_mean):
            entry.reward_sum += reward_mean
        entry.signal_bits += bits
        entry.zero_streak = 0 if outcome == "informative" else entry.zero_streak + 1
        entry.last = outcome
        entry.last_step = step
        self.entries[key] = entry
        return evicted

    def fractions(self) -> dict[str, float]:
        """Fractions of the prompts in the ledger whose latest visit was solved / unsolved / informative."""
        count = len(self.entries)
        if not count:
            return {}
        tally = {"solved": 0, "unsolved": 0, "informative": 0}
        for entry in self.entries.values():
            if entry.last in tally:
                tally[entry.last] += 1
        return {name: value / count for name, value in tally.items()}

    def taught_nothing(self, limit: int = 20) -> list[tuple[str, LedgerEntry]]:
        """Prompts visited that never delivered any signal, most visited first (at most ``limit``)."""
        silent = [(k, e) for k, e in self.entries.items() if e.signal_bits == 0.0 and e.visits]
        silent.sort(key=lambda item: (-item[1].visits, item[0]))
        return silent[:limit]

    def get_state(self) -> dict[str, Any]:
        """JSON-able state (entries in recency order)."""
        return {
            "max_prompts": self.max_prompts,
            "evicted": self.evicted,
            "entries": [[key, asdict(entry)] for key, entry in self.entries.items()],
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``get_state()``'s output."""
        self.evicted = int(state.get("evicted", 0))
        self.entries = OrderedDict((str(key), LedgerEntry(**entry)) for key, entry in state["entries"])
        while len(self.entries) > self.max_prompts:
            self.entries.popitem(last=False)
