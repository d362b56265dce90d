"""Training-time probes: measurements taken every N steps that never change training.

- ``conflict``: for each task pair, the cosine of the shared-parameter gradients,
  their gradient magnitude similarity 2|g_i||g_j| / (|g_i|^2 + |g_j|^2), and the
  fraction of probed steps where they conflict (cosine < 0). Yu et al.,
  "Gradient Surgery for Multi-Task Learning", NeurIPS 2020,
  https://arxiv.org/abs/2001.06782.
- ``affinity``: lookahead inter-task affinity Z_{i->j} = 1 - L_j(theta'_i) / L_j(theta),
  theta'_i one SGD step (the trial's learning rate) on task i's loss applied to
  the shared parameters, on the same batch; averaged over probed steps. Fifty
  et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
  NeurIPS 2021, https://arxiv.org/abs/2109.04617.

Probes run their own forward passes inside ``torch.random.fork_rng`` and use
``autograd.grad`` (no ``.grad`` accumulation), so a trial's result is the same
with or without them; only its cost changes.

Schedule: every N steps from step 0, or ``"auto"``: about ``AUTO_PROBES`` probes per
trial (every max(1, total_steps // AUTO_PROBES) steps). Every result carries
``probed_steps`` (how many steps it averages over), ``every`` and ``trial_steps``; a
result from fewer than ``MIN_PROBED_STEPS`` probed steps is mostly the step-0
measurement, taken before any strategy acted, and the report does not show it as a
per-strategy finding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "AUTO_PROBES",
    "MIN_PROBED_STEPS",
    "AffinityProbe",
    "ConflictProbe",
    "Probe",
    "build_probes",
    "probe_interval",
]

AUTO_PROBES = 20  # probes per trial under every = "auto"
MIN_PROBED_STEPS = 5  # fewer: not reported as a per-strategy finding

LossFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


class Probe:
    """Base: ``observe`` on every ``every``-th step, ``result`` at the end."""

    name = ""

    def __init__(self, every: int, task_names: Sequence[str], trial_steps: int | None = None,
                 ) -> None:
        self.every = every
        self.tasks = list(task_names)
        self.trial_steps = trial_steps

    def _coverage(self, probed: int) -> dict[str, Any]:
        return {"probed_steps": probed, "every": self.every, "trial_steps": self.trial_steps}

    def observe(
        self,
        step: int,
        model: nn.Module,
        shared: Sequence[nn.Parameter],
        batch: tuple[torch.Tensor, dict[str, torch.Tensor]],
        compute_losses: LossFn,
    ) -> None:
        if step % self.every == 0 and shared:
            devices = [batch[0].device] if batch[0].is_cuda else []
            with torch.random.fork_rng(devices=devices):
                self._observe(step, model, shared, batch, compute_losses)

    def _observe(self, step, model, shared, batch, compute_losses) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError

    def pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.tasks)) for j in range(i + 1, len(self.tasks))]


class ConflictProbe(Probe):
    """Pairwise cosine and magnitude similarity of task gradients on the shared parameters."""

    name = "conflict"

    def __init__(self, every: int, task_names: Sequence[str], trial_steps: int | None = None,
                 ) -> None:
        super().__init__(every, task_names, trial_steps)
        self.steps: list[int] = []
        self._cos: list[torch.Tensor] = []
        self._gms: list[torch.Tensor] = []

    def _observe(self, step, model, shared, batch, compute_losses) -> None:
        x, y = batch
        losses = compute_losses(model(x), y)
        rows = []
        for loss in losses:
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, shared, strict=True)
            ]))
        jac = torch.stack(rows).detach()
        gram = jac @ jac.T
        sq = gram.diagonal()
        norms = sq.clamp_min(0).sqrt()
        outer = norms[:, None] * norms[None, :]
        tiny = torch.finfo(jac.dtype).tiny
        self._cos.append(gram / outer.clamp_min(tiny))
        self._gms.append(2 * outer / (sq[:, None] + sq[None, :]).clamp_min(tiny))
        self.steps.append(step)

    def result(self) -> dict[str, Any]:
        if not self.steps:
            return {"steps": [], "pairs": {}, "conflict_fraction": {}, **self._coverage(0)}
        cos = torch.stack(self._cos).cpu()  # one transfer, at the end of training
        gms = torch.stack(self._gms).cpu()
        pairs: dict[str, Any] = {}
        fraction: dict[str, float] = {}
        for i, j in self.pairs():
            key = f"{self.tasks[i]}|{self.tasks[j]}"
            pairs[key] = {
                "cosine": cos[:, i, j].tolist(),
                "magnitude_similarity": gms[:, i, j].tolist(),
            }
            fraction[key] = float((cos[:, i, j] < 0).float().mean())
        return {"steps": self.steps, "pairs": pairs, "conflict_fraction": fraction,
                **self._coverage(len(self.steps))}


class AffinityProbe(Probe):
    """Lookahead inter-task affinity (Fifty et al. 2021)."""

    name = "affinity"

    def __init__(self, every: int, task_names: Sequence[str], lr: float,
                 trial_steps: int | None = None) -> None:
        super().__init__(every, task_names, trial_steps)
        self.lr = lr
        self._sum: torch.Tensor | None = None
        self._count = 0
        self.steps: list[int] = []

    def _observe(self, step, model, shared, batch, compute_losses) -> None:
        x, y = batch
        params = dict(model.named_parameters())
        shared_names = [n for n, p in params.items() if any(p is s for s in shared)]
        losses = compute_losses(model(x), y)
        base = losses.detach()
        num = len(self.tasks)
        affinity = torch.zeros(num, num, device=base.device)
        for i in range(num):
            grads = torch.autograd.grad(losses[i], [params[n] for n in shared_names],
                                        retain_graph=True, allow_unused=True)
            lookahead = dict(params)
            for name, g in zip(shared_names, grads, strict=True):
                if g is not None:
                    lookahead[name] = params[name].detach() - self.lr * g
            with torch.no_grad():
                after = compute_losses(functional_call(model, lookahead, (x,)), y)
            affinity[i] = 1 - after / base
        self._sum = affinity if self._sum is None else self._sum + affinity
        self._count += 1
        self.steps.append(step)

    def result(self) -> dict[str, Any]:
        if self._sum is None:
            return {"matrix": {}, "observations": 0, "steps": [], **self._coverage(0)}
        mean = (self._sum / self._count).cpu().tolist()
        matrix = {
            self.tasks[i]: {self.tasks[j]: mean[i][j] for j in range(len(self.tasks))}
            for i in range(len(self.tasks))
        }
        return {"matrix": matrix, "observations": self._count, "steps": self.steps,
                **self._coverage(self._count)}


def probe_interval(every: int | str, total_steps: int) -> int:
    """Steps between probes: ``every`` itself, or for ``"auto"`` about ``AUTO_PROBES`` per
    trial of ``total_steps`` steps (0 = off)."""
    if every == "auto":
        return max(1, total_steps // AUTO_PROBES)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ValueError(f"probe interval must be a step count >= 0 or 'auto', got {every!r}")
    return every


def build_probes(settings: dict[str, Any], task_names: Sequence[str], lr: float,
                 total_steps: int) -> list[Probe]:
    """Probes enabled in a trial's ``probes`` settings (``conflict_every``, ``affinity_every``:
    a step count, 0 = off, or ``"auto"``) for a trial of ``total_steps`` steps. Single-task
    trials get none."""
    if len(task_names) < 2:
        return []
    probes: list[Probe] = []
    if (every := probe_interval(settings.get("conflict_every", 0), total_steps)) > 0:
        probes.append(ConflictProbe(every, task_names, total_steps))
    if (every := probe_interval(settings.get("affinity_every", 0), total_steps)) > 0:
        probes.append(AffinityProbe(every, task_names, lr, total_steps))
    return probes
