"""Contract for sharing architectures.

A sharing architecture is an ``nn.Module`` whose ``forward(x)`` returns
``{task_name: output}``. It splits its parameters into shared ones (what the
gradient engine builds the per-task Jacobian for) and task-specific ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from bench.spec import ModelSettings
from bench.tasks import Task

__all__ = ["BackboneSpec", "SharingArchitecture"]


@dataclass(frozen=True)
class BackboneSpec:
    """Size of the networks an architecture builds: backbone widths and task-tower widths."""

    hidden: tuple[int, ...] = (64, 64)
    tower: tuple[int, ...] = ()
    dropout: float = 0.0
    kind: Literal["mlp", "cnn"] = "mlp"
    channels: tuple[int, ...] = (16, 32)  # conv channels of the CNN backbone

    @classmethod
    def of(cls, model: ModelSettings) -> BackboneSpec:
        """The widths of a sweep's (or a trial's) model settings."""
        return cls(hidden=tuple(model.hidden), tower=tuple(model.tower), dropout=model.dropout,
                   kind=model.backbone, channels=tuple(model.channels))


class SharingArchitecture(nn.Module, ABC):
    """Base class: a multi-task network over ``tasks`` for inputs of ``input_shape``.

    ``has_representation``: the architecture sets ``self.representation`` in each
    forward pass to the one tensor all task heads read (the ``rep`` engine's input).
    ``reset_stats``/``stats``: diagnostics gathered during evaluation forwards
    (e.g. expert utilisation of gated architectures), stored in the trial record.
    """

    has_representation: ClassVar[bool] = False

    def __init__(
        self, input_shape: Sequence[int], tasks: Sequence[Task], backbone: BackboneSpec
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.tasks = tuple(tasks)
        self.backbone_spec = backbone
        # The shared representation of the latest forward pass, where the
        # architecture has one (for representation-level gradient engines).
        self.representation: torch.Tensor | None = None

    @abstractmethod
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of every task for the batch ``x``."""

    @abstractmethod
    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters used by more than one task (may be empty)."""

    @abstractmethod
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters used by ``task`` only."""

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def regularization(self) -> torch.Tensor | None:
        """A penalty on the parameters added to the training objective outside the
        weighting strategy (never weighted or projected by it), e.g. soft sharing's
        L2 distance between task columns; ``None`` when the architecture has none."""
        return None

    def reset_stats(self) -> None:
        """Clear diagnostics before an evaluation pass."""

    def stats(self) -> dict[str, Any]:
        """Diagnostics gathered since ``reset_stats`` (JSON-serialisable)."""
        return {}
