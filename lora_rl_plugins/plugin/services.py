"""Services: objects a plugin offers to the integrations, found by type (never by a plugin's name).

A plugin offers a service by implementing the first-result hook ``get_service(kind)``: it returns
its object when ``kind`` is a type it serves, else None::

    @hookimpl
    def get_service(self, kind: type) -> object | None:
        return self.sampler if kind is PromptSampler and self.sampler_on else None

An integration asks the run session (``RunSession.service(PromptSampler)``) and installs what it
gets; None means no plugin offers it (the option is off, the plugin is blocked). The interfaces
below are what the integrations call, so a third-party plugin can replace the built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, runtime_checkable

from .collective import Collective
from .events import RolloutsScored

__all__ = ["BatchFilter", "FilterBatch", "PromptSampler"]


@runtime_checkable
class PromptSampler(Protocol):
    """Chooses the prompts of each generation batch before they are generated (informative sampling).

    The integration ``bind``s it to its dataset once, then draws each batch's prompt indices; a
    trainer that re-iterates its sampler from the epoch start (TRL, after a resume) calls
    ``new_epoch`` when it starts iterating. Its position is part of the offering plugin's state.
    """

    def bind(self, key_of: Callable[[int], Hashable], size: int, seed: int) -> None:
        """Draw from ``size`` prompts; ``key_of(index)`` is the prompt's stable key (``learning.ledger.prompt_key``)."""

    def draw(self, count: int, shuffle: bool = True) -> list[int]:
        """The indices of the next ``count`` prompts (the same on every process)."""

    def new_epoch(
        self, order: list[int] | None = None, *, sampler_state: str | None = None, replay: bool = True
    ) -> None:
        """The trainer starts iterating its sampler (again). ``order``: the trainer's own order of this epoch
        (the stream to draw from, skipping only within it; None: the sampler's own permutation);
        ``sampler_state``: the trainer sampler's generator state at the epoch start (opaque, saved for a resume);
        ``replay=False``: a resumed run's recorded epoch was complete (start the next one)."""


@runtime_checkable
class FilterBatch(Protocol):
    """One generation batch's slots under the after-generation filter (``learning.filtering.GroupFilter``)."""

    extra_rounds: int

    def offer(self, zero_information: Sequence[bool], hopeless: Sequence[str | None] | None = None) -> None:
        """One round's groups: True where the group carries no information (its advantages are all zero); per
        group, why it cannot become informative by regenerating (None: it may; ``filtering.hopeless_groups``)."""

    def needs_refill(self) -> bool:
        """Whether to generate the batch again (rounds left and an empty slot that may still become informative)."""

    def row_rounds(self, first_row: int, rows: int, group_size: int) -> list[int]:
        """For the rows [first_row, first_row + rows) of the batch: the round each row is taken from."""


@runtime_checkable
class BatchFilter(Protocol):
    """Keeps only groups with information in each generation batch (``sampling="filter"``), refilling the rest."""

    def begin(self) -> FilterBatch:
        """A fresh filter for one generation batch.

        Raises:
            ValueError: the trainer's advantage settings make groups depend on each other (the message
                names the setting to change).
        """

    def offer_round(self, batch: FilterBatch, scored: RolloutsScored) -> None:
        """Offer one freshly generated round, already scored (``scored``: its ``RolloutsScored``, advantages
        included, after every plugin's ``on_rollouts_scored``) to ``batch``."""

    def done(self, batch: FilterBatch, group_size: int, seconds: float, collective: Collective | None = None) -> None:
        """Count one batch's filtering in the run totals (every process calls it once per batch)."""


def offer(kind: type, services: Sequence[Any]) -> Any:
    """The first of ``services`` that is an instance of ``kind`` (None if none): a ``get_service`` body."""
    return next((service for service in services if service is not None and isinstance(service, kind)), None)
