"""On CUDA, the per-step paths of the strategies that do not need the host stay on the device.

(Moved from test_weighting.py, test_weighting_loss_based.py, test_weighting_stateful.py.)"""

from __future__ import annotations

import pytest
import torch

from unit.weighting._inputs import (
    batches,
    make,
    step,
)

STATEFUL_NAMES = ["pcgrad", "graddrop", "gradvac", "moco", "fairgrad", "excess_mtl", "sdmgrad", "modo"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_step_paths_do_not_synchronize_with_the_host_ew_uw_dwa_mgda_pcgrad():
    # MGDA with T > 2 copies its T x T Gramian to the host once per step, by design.
    device = torch.device("cuda")
    losses = torch.rand(3, device=device)
    mean_losses = torch.rand(3, device=device) + 0.5
    jac2, jac4 = torch.randn(2, 64, device=device), torch.randn(4, 64, device=device)
    strategies = {name: make(name, 3, "cuda") for name in ["ew", "uw", "dwa"]}
    pcgrad, mgda = make("pcgrad", 4, "cuda"), make("mgda", 2, "cuda")

    def step():
        for strategy in strategies.values():
            strategy.combine(losses)
            strategy.end_epoch(mean_losses)
        pcgrad.aggregate(jac4)
        mgda.aggregate(jac2)

    step()  # warm-up: lazy CUDA / cuBLAS initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_step_paths_do_not_synchronize_with_the_host_loss_based():
    device = torch.device("cuda")
    losses = torch.rand(3, device=device) + 0.1
    jac = torch.randn(3, 64, device=device)
    mean_losses = torch.rand(3, device=device) + 0.5
    loss_based = [
        make("ls", 3, "cuda", weights=(1.0, 2.0, 3.0)), make("si", 3, "cuda"),
        make("gls", 3, "cuda"), make("rlw", 3, "cuda"),
        make("stch", 3, "cuda", warmup_epoch=0), make("famo", 3, "cuda"),
    ]
    gradient_based = [make("db_mtl", 3, "cuda"), make("gradnorm", 3, "cuda")]

    def step():
        for strategy in loss_based:
            strategy.combine(strategy.transform_losses(losses))
            strategy.post_step(losses * 0.9)
            strategy.end_epoch(mean_losses)
        for strategy in gradient_based:
            strategy.aggregate(jac, strategy.transform_losses(losses))
            strategy.end_epoch(mean_losses)

    step()  # warm-up: lazy CUDA initialisation may synchronise; STCH leaves its warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_step_paths_do_not_synchronize_with_the_host_stateful():
    # FairGrad solves on the host by design; every other method stays on the device.
    device = "cuda"
    strategies = {name: make(name, 4, device) for name in STATEFUL_NAMES if name != "fairgrad"}
    inputs = {name: batches(s, 4, 64, 0, device) for name, s in strategies.items()}

    def run():
        for name, strategy in strategies.items():
            step(strategy, inputs[name])

    run()  # warm-up: lazy CUDA / cuBLAS initialisation and first-step allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
