"""bench/assembly.py: the optimizer the training step is built with."""

from __future__ import annotations

import pytest
import torch

from bench.assembly import make_optimizer
from bench.spec import TrainSettings


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_are_fused_where_every_parameter_allows_it(optimizer):
    # PyTorch's fused kernels: one for all parameters instead of about ten per tensor.
    train = TrainSettings(optimizer=optimizer, lr=0.1)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    opt = make_optimizer(params, train)
    assert opt.defaults["fused"] is True
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_the_optimizer_is_not_fused_where_a_parameter_has_no_fused_kernel():
    # A parameter on the meta device has none: the plain implementation is kept.
    params = [torch.nn.Parameter(torch.randn(2)),
              torch.nn.Parameter(torch.empty(2, device="meta"))]
    assert not make_optimizer(params, TrainSettings(optimizer="adam")).defaults["fused"]


def test_a_fused_step_is_the_plain_step_up_to_rounding():
    torch.manual_seed(0)
    start = torch.randn(64, 32)
    results = []
    for fused in (True, False):
        p = torch.nn.Parameter(start.clone())
        opt = (make_optimizer([p], TrainSettings(optimizer="adam")) if fused
               else torch.optim.Adam([p], lr=1e-3))
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            p.grad = torch.randn(64, 32, generator=gen)
            opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
