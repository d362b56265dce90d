"""Tasks: what is predicted, how it is trained (loss) and how it is scored (metrics)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

__all__ = ["HIGHER_IS_BETTER", "Task", "TaskKind"]

TaskKind = Literal["binary", "multiclass", "regression", "objective"]

# Direction of every metric mtlbench computes; analysis uses it for delta-m.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "auc": True, "mse": False, "mae": False, "value": False,
}


@dataclass(frozen=True)
class Task:
    """One prediction target.

    ``binary`` labels are floats in {0, 1} (one logit), ``multiclass`` labels are
    class indices in ``[0, num_classes)`` (``num_classes`` logits), ``regression``
    targets are floats (one output). ``objective`` tasks have no labels: the
    model's (B, num_classes) output is a point and ``objective`` maps it to the
    per-sample loss (the toy loss landscapes of the CAGrad/Nash-MTL papers).
    """

    name: str
    kind: TaskKind
    num_classes: int = 0
    objective: Callable[[torch.Tensor], torch.Tensor] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(f"task '{self.name}': multiclass needs num_classes >= 2")
        if self.kind == "objective" and (self.objective is None or self.num_classes < 1):
            raise ValueError(f"task '{self.name}': objective needs a function and num_classes")

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.kind in ("multiclass", "objective") else 1

    @property
    def metrics(self) -> tuple[str, ...]:
        return {
            "binary": ("accuracy", "auc"),
            "multiclass": ("accuracy",),
            "regression": ("mse", "mae"),
            "objective": ("value",),
        }[self.kind]

    @property
    def primary_metric(self) -> str:
        """The metric shown first in tables (AUC for binary tasks, as in the MMoE paper)."""
        return {
            "binary": "auc", "multiclass": "accuracy", "regression": "mse", "objective": "value",
        }[self.kind]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch: BCE-with-logits, cross-entropy or MSE."""
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(output.squeeze(-1), target.float())
        if self.kind == "multiclass":
            return F.cross_entropy(output, target.long())
        if self.kind == "objective":
            return self.objective(output).mean()  # type: ignore[misc]
        return F.mse_loss(output.squeeze(-1), target.float())

    def score(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """All metrics of this task on a full split (called once per evaluation)."""
        out = output.detach().float().cpu()
        y = target.detach().cpu()
        if self.kind == "objective":
            return {"value": float(self.objective(out).mean())}  # type: ignore[misc]
        if self.kind == "binary":
            logits = out.squeeze(-1).numpy()
            labels = y.numpy().astype(np.int64)
            acc = float(((logits > 0).astype(np.int64) == labels).mean())
            both_classes = len(np.unique(labels)) == 2
            auc = float(roc_auc_score(labels, logits)) if both_classes else float("nan")
            return {"accuracy": acc, "auc": auc}
        if self.kind == "multiclass":
            return {"accuracy": float((out.argmax(-1) == y.long()).float().mean())}
        err = out.squeeze(-1) - y.float()
        return {"mse": float((err**2).mean()), "mae": float(err.abs().mean())}
