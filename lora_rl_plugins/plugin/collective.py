"""Cross-process reductions the integrations provide: the one way plugins talk across processes.

Every integration hands plugins a ``Collective``: one process (``SingleProcess``) or a framework's
tensor all-gather wrapped in ``TensorCollective`` (accelerate's ``gather``, Lightning's
``strategy.all_gather``). Sums, maxima and object gathering all go through it, so every adapter
gathers the same way and every process makes the same collective calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Collective", "SingleProcess", "TensorCollective"]


@runtime_checkable
class Collective(Protocol):
    """Cross-process reductions: every process calls each method, every process gets the result."""

    world_size: int
    rank: int

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` (length n on every process) over all processes."""
        ...

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of ``values`` over all processes."""
        ...

    def gather_objects(self, values: Sequence[Any]) -> list[Any]:
        """Every process's ``values`` concatenated in process order (picklable objects)."""
        ...


class SingleProcess:
    """The ``Collective`` of a run on one process: every reduction is the identity."""

    world_size = 1
    rank = 0

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` as floats."""
        return [float(v) for v in values]

    def max(self, values: Sequence[float]) -> list[float]:
        """``values`` as floats."""
        return [float(v) for v in values]

    def gather_objects(self, values: Sequence[Any]) -> list[Any]:
        """``values`` as a list."""
        return list(values)


class TensorCollective:
    """A ``Collective`` from a framework's tensor all-gather and object all-gather.

    Args:
        all_gather: ``tensor [1, n] -> tensor [world_size, n]`` (or [world_size·n]) in process order.
        device: where the gathered tensor must live (the framework's device for the backend).
        world_size, rank: the process group's size and this process's index.
        gather_objects: ``list -> list`` of every process's items in process order; default
            ``torch.distributed.all_gather_object``.

    torch is imported only when there is more than one process.
    """

    def __init__(
        self,
        all_gather: Callable[[Any], Any],
        device: Any,
        world_size: int,
        rank: int,
        gather_objects: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        self.all_gather, self.device = all_gather, device
        self.world_size, self.rank = world_size, rank
        self._gather_objects = gather_objects

    def _rows(self, values: Sequence[float]) -> list[list[float]]:
        if self.world_size == 1:
            return [[float(v) for v in values]]
        import torch

        local = torch.tensor([[float(v) for v in values]], dtype=torch.float64, device=self.device)
        return self.all_gather(local).reshape(self.world_size, -1).tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over processes (float64)."""
        return [float(sum(column)) for column in zip(*self._rows(values), strict=True)]

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum over processes."""
        return [float(max(column)) for column in zip(*self._rows(values), strict=True)]

    def gather_objects(self, values: Sequence[Any]) -> list[Any]:
        """Every process's ``values``, concatenated in process order."""
        if self.world_size == 1:
            return list(values)
        if self._gather_objects is not None:
            return list(self._gather_objects(list(values)))
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, list(values))
        return [item for part in parts for item in part]
