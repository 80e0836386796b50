"""Informative prompt sampling: skip prompts that deliver no signal *before* generating them
(docs/theory.md §8).

A prompt whose last ``skip_after`` visits all delivered no signal (the trainer's advantages of each
group all zero: equal rewards under the default settings) is skipped and replaced by the next prompt
of the stream, except with probability ``revisit`` (so a prompt that became informative again is
found). Decisions depend only on the ledger (identical on every process), the prompt's key and a hash
of (seed, epoch, draw position): every process draws the same prompts. Batches stay full: the stream
wraps around when needed.

Under TRL the stream of an epoch is TRL's own ``RepeatSampler`` order (its seeded permutation, then the
prompts its last incomplete chunk leaves out): a run that skips nothing draws exactly the prompts, in
the order, of the same run without informative sampling. Elsewhere (Lightning) the stream is the
selector's own seeded permutation of each epoch.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import random
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from .ledger import PromptLedger

__all__ = ["InformativeRepeatSampler", "InformativeSelector"]


class InformativeSelector:
    """Draws prompt indices for generation, skipping those the ledger says teach nothing.

    Args:
        ledger: the per-prompt ledger (shared with the learning plugin).
        key_of: dataset index -> the ledger key of that prompt.
        size: number of prompts in the dataset.
        skip_after: k, skip a prompt whose last k visits delivered no signal.
        revisit: probability of drawing a skippable prompt anyway.
        seed: seeds the permutations and revisit draws (same on every process).
        skip_unsolved: also skip prompts whose zero-signal streak ended unsolved (every rollout at the
            bottom reward). Off by default: a prompt too hard *now* improves only by being tried, and
            skipping it starved learning in the benchmark (benchmarks/informative_sampling.py).

    Raises:
        ValueError: ``size`` < 1, ``skip_after`` < 1 or ``revisit`` outside [0, 1].
    """

    def __init__(
        self,
        ledger: PromptLedger,
        key_of: Callable[[int], Hashable],
        size: int,
        *,
        skip_after: int = 2,
        revisit: float = 0.1,
        seed: int = 0,
        skip_unsolved: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"the dataset has {size} prompts: informative sampling needs at least one")
        if skip_after < 1:
            raise ValueError(f"skip_after must be >= 1, got {skip_after}")
        if not 0.0 <= revisit <= 1.0:
            raise ValueError(f"revisit must be a probability in [0, 1], got {revisit}")
        self.ledger, self.key_of, self.size = ledger, key_of, size
        self.skip_after, self.revisit, self.seed = skip_after, revisit, seed
        self.skip_unsolved = skip_unsolved
        self.skipped = 0
        """Prompts skipped so far (each saves one group of generations)."""
        self._keys: dict[int, Hashable] = {}
        self._order: tuple[tuple[int, bool], list[int]] | None = None
        self.stream: list[int] | None = None
        """The trainer's order for the current epoch (``use_stream``), or None: the selector's own permutations."""

    def skippable(self, index: int) -> bool:
        """Whether the prompt at ``index`` delivered no signal on its last ``skip_after`` visits, the latest
        solved (or, with ``skip_unsolved``, any zero-signal outcome)."""
        key = self._keys.get(index)
        if key is None:
            key = self._keys[index] = self.key_of(index)
        entry = self.ledger.get(key)
        if entry is None or entry.zero_streak < self.skip_after:
            return False
        return self.skip_unsolved or entry.last == "solved"

    def _chance(self, epoch: int, position: int) -> float:
        digest = hashlib.sha1(f"{self.seed}:{epoch}:{position}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def permutation(self, epoch: int, shuffle: bool = True) -> list[int]:
        """The base order of epoch ``epoch`` (seeded; identical on every process)."""
        if self._order is not None and self._order[0] == (epoch, shuffle):
            return self._order[1]
        order = list(range(self.size))
        if shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        self._order = ((epoch, shuffle), order)
        return order

    def use_stream(self, order: list[int]) -> None:
        """Draw from the trainer's own order from now on: ``order`` (distinct dataset indices), then the
        prompts it leaves out in index order; the stream wraps around within the epoch.

        Raises:
            ValueError: ``order`` repeats an index or holds one outside [0, size).
        """
        if len(set(order)) != len(order) or any(not 0 <= index < self.size for index in order):
            raise ValueError(
                f"the trainer's sampler order must hold distinct indices in [0, {self.size}): got {len(order)} "
                f"indices, {len(set(order))} distinct, range {min(order, default=0)}..{max(order, default=0)}"
            )
        seen = set(order)
        self.stream = list(order) + [index for index in range(self.size) if index not in seen]

    def draw(self, count: int, cursor: dict[str, Any], shuffle: bool = True) -> list[int]:
        """``count`` distinct-where-possible prompt indices from the stream at ``cursor``.

        ``cursor`` is {"epoch": e, "position": p} (updated in place): the position in the epoch's
        stream (the trainer's order after ``use_stream``, wrapping within the epoch; else the selector's
        permutation, moving on to the next epoch's at its end). ``skipped`` grows by the skippable
        prompts among the first ``count`` candidates: the zero-signal groups drawing the next ``count``
        prompts of the stream would have generated.
        A skippable prompt is passed over unless a revisit draw accepts it; after a whole
        pass without enough prompts, the passed-over ones are taken so the batch stays full (and not counted
        as skipped).
        """
        chosen: list[int] = []
        passed: list[int] = []
        taken_back = 0
        skipped_early = 0
        while len(chosen) < count:
            if len(passed) >= self.size:  # a whole pass without enough: generate the passed-over prompts after all
                taken_back = count - len(chosen)
                chosen += passed[:taken_back]
                break
            if self.stream is not None:
                index = self.stream[cursor["position"] % len(self.stream)]
            else:
                order = self.permutation(cursor["epoch"], shuffle)
                if cursor["position"] >= len(order):
                    cursor["epoch"] += 1
                    cursor["position"] = 0
                    continue
                index = order[cursor["position"]]
            chance = self._chance(cursor["epoch"], cursor["position"])
            cursor["position"] += 1
            if self.skippable(index) and chance >= self.revisit:
                skipped_early += len(chosen) + len(passed) < count
                passed.append(index)
                continue
            chosen.append(index)
        self.skipped += max(0, skipped_early - taken_back)
        return chosen


class InformativeRepeatSampler:
    """TRL's ``RepeatSampler`` with each chunk of prompts drawn by the learning plugin from TRL's own order.

    ``base`` is the trainer's own sampler (``GRPOTrainer._get_train_sampler()``: a ``RepeatSampler``);
    its layout is kept: ``num_samples // batch_size`` chunks of ``batch_size`` prompts, each chunk
    repeated ``repeat_count`` times (``steps_per_generation`` × ``num_iterations``) and each prompt
    ``mini_repeat_count`` times (``num_generations``) in a row. Each epoch the base sampler's own order
    is read (a shallow copy with both repeat counts 1, sharing its generator, so TRL's generator
    advances exactly as without this wrapper) and handed to ``learning.new_epoch``; the chunks are then
    ``learning.draw`` from it, which only skips within it: with nothing skipped the yielded indices are
    exactly the base sampler's. After a resume the generator state saved at the epoch's start is
    restored first (TRL's own sampler restarts from its seed), so the resumed run draws what the
    uninterrupted one drew. ``resumed_at_epoch_end``: whether the checkpoint ended an epoch (the
    trainer then starts the next one instead of skipping into the saved one; the recorded draws cannot
    tell, the data loader draws a batch ahead). Same length as ``base``.

    Raises:
        TypeError: ``base`` lacks a ``RepeatSampler`` attribute (the message names it: a TRL whose
            sampler changed; turn ``informative_sampling`` off).
    """

    LAYOUT = ("num_samples", "batch_size", "repeat_count", "mini_repeat_count", "shuffle")

    def __init__(self, base: Any, learning: Any, resumed_at_epoch_end: Callable[[], bool] | None = None) -> None:
        missing = [name for name in self.LAYOUT if not hasattr(base, name)]
        if missing:
            raise TypeError(
                f"informative sampling follows TRL's RepeatSampler layout, but the trainer's sampler "
                f"{type(base).__name__} has no {', '.join(missing)}: turn informative_sampling off for this TRL"
            )
        self.base, self.learning = base, learning
        self.resumed_at_epoch_end = resumed_at_epoch_end

    def __len__(self) -> int:
        return len(self.base)

    def _order(self) -> list[int]:
        """One epoch of the base sampler's order: its chunks' prompts, each once (advances its generator)."""
        view = copy.copy(self.base)
        view.repeat_count = view.mini_repeat_count = 1
        return [int(index) for index in view]

    def __iter__(self) -> Iterator[int]:
        base, learning = self.base, self.learning
        generator = getattr(base, "generator", None) if base.shuffle else None
        resuming = bool(getattr(learning, "resuming", False))  # a third-party PromptSampler may not resume
        saved = learning.cursor.get("sampler_state") if resuming else None
        # resumed exactly at an epoch's end: the trainer starts the next epoch, nothing to replay
        finished = resuming and self.resumed_at_epoch_end is not None and self.resumed_at_epoch_end()
        if generator is not None and saved:
            generator.set_state(generator.get_state().new_tensor(list(base64.b64decode(saved))))
            if finished:
                self._order()  # the finished epoch's permutation, as the uninterrupted run drew it
        state = None if generator is None else base64.b64encode(bytes(generator.get_state().tolist())).decode()
        learning.new_epoch(self._order(), sampler_state=state, replay=not finished)
        for _ in range(base.num_samples // base.batch_size):
            chunk = learning.draw(base.batch_size, shuffle=base.shuffle)
            for _ in range(base.repeat_count):
                for index in chunk:
                    for _ in range(base.mini_repeat_count):
                        yield index
