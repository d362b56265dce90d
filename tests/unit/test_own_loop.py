"""A strategy in a user's own training loop (``bench.own_loop``): the lifecycle calls a
plain loop misses fail loudly, the gradients are the harness engine's, and the README's
example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bench.assembly import step_context
from bench.engine import ENGINES, apply_gradients
from bench.own_loop import MTLBackward, mtl_backward
from bench.tasks import Task
from strategies import sharing
from strategies.weighting import get

ROOT = Path(__file__).resolve().parents[2]


class _TwoTasks(nn.Module):
    """A trunk and two regression heads: task a is linear (its loss falls to ~0 fast),
    task b (a sum of squares) needs the trunk's capacity."""

    def __init__(self, seed: int = 0, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.x = torch.randn(512, 8)
        self.y_a = self.x @ torch.randn(8, 1) * 0.1
        self.y_b = (self.x[:, :4] ** 2).sum(1, keepdim=True)
        self.trunk = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width),
                                   nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(width, 1), nn.Linear(width, 1)])

    def losses(self) -> torch.Tensor:
        h = self.trunk(self.x)
        return torch.stack([F.mse_loss(self.heads[0](h), self.y_a),
                            F.mse_loss(self.heads[1](h), self.y_b)])


STEPS, LR = 600, 3e-3


def _famo_plain_loop() -> torch.Tensor:
    """FAMO as a plain loop uses it: combine().backward(), no post-step losses."""
    net = _TwoTasks()
    famo = get("famo", gamma=0.0)
    famo.reset(2, torch.device("cpu"))
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        famo.combine(net.losses()).backward()
        opt.step()
    return net.losses().detach()


def _famo_own_loop() -> torch.Tensor:
    net = _TwoTasks()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    mtl = MTLBackward(get("famo", gamma=0.0), net, opt, shared=net.trunk.parameters())
    for _ in range(STEPS):
        opt.zero_grad()
        mtl.backward(net.losses())
        opt.step()
        with torch.no_grad():
            mtl.after_step(net.losses())
    return net.losses().detach()


@pytest.fixture
def one_thread():
    """Fixed intra-op threads: the training curves below are then reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_famo_through_the_api_trains_the_task_a_plain_loop_starves():
    plain = _famo_plain_loop()
    own = _famo_own_loop()
    # Without post-step losses FAMO's weights stay 1/L_t: task a's vanishing loss takes
    # every update and task b stays far from trained (it starts at about 24; ew reaches
    # 0.003). With them, b's weight grows until its log-loss falls as fast as a's.
    assert plain[1] > 5
    assert own[1] < 1
    assert own[0] < 0.01


def _net_and_opt(strategy: str, **options: object) -> tuple[_TwoTasks, torch.optim.Optimizer,
                                                             MTLBackward]:
    net = _TwoTasks(width=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    mtl = MTLBackward(get(strategy), net, opt, shared=net.trunk.parameters(),
                      **options)  # type: ignore[arg-type]
    return net, opt, mtl


def test_missing_post_step_call_raises_at_the_next_step():
    net, opt, mtl = _net_and_opt("famo")
    mtl.backward(net.losses())
    opt.step()
    with pytest.raises(RuntimeError, match=r"call after_step\(new_losses\) after optimizer"):
        mtl.backward(net.losses())


def test_post_step_call_before_the_optimizer_step_raises():
    net, _, mtl = _net_and_opt("famo")
    mtl.backward(net.losses())
    with pytest.raises(RuntimeError, match=r"after_step\(\) before optimizer.step\(\)"):
        mtl.after_step(net.losses().detach())


def test_after_step_is_a_no_op_for_strategies_without_post_step_losses():
    net, opt, mtl = _net_and_opt("ew")
    assert not mtl.wants_post_step_losses
    mtl.backward(net.losses())
    opt.step()
    mtl.after_step(net.losses().detach())
    mtl.backward(net.losses())  # no error: ew needs nothing after the step


def test_uw_parameters_missing_from_the_optimizer_raise():
    net, _, mtl = _net_and_opt("uw")
    with pytest.raises(RuntimeError, match=r"uw.*optimizer does not hold"):
        mtl.backward(net.losses())


def test_uw_parameters_in_the_optimizer_are_trained():
    net = _TwoTasks(width=8)
    mtl_opt = torch.optim.SGD(net.parameters(), lr=0.05)
    mtl = MTLBackward(get("uw"), net, mtl_opt, num_tasks=2)
    # Built before the optimizer could hold them; added to it as the error message says.
    mtl_opt.add_param_group({"params": mtl.parameters()})
    for _ in range(3):
        mtl_opt.zero_grad()
        mtl.backward(net.losses())
        mtl_opt.step()
    (log_vars,) = mtl.parameters()
    assert not torch.equal(log_vars.detach(), torch.zeros(2))
    assert not torch.equal(mtl.weights, torch.full((2,), 0.5))


def test_add_parameters_puts_the_strategy_parameters_in_the_optimizer():
    net, opt, mtl = _net_and_opt("uw", add_parameters=True)
    mtl.backward(net.losses())
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in mtl.parameters())


def test_epoch_strategies_need_an_epoch_length():
    with pytest.raises(ValueError, match=r"dwa.*steps_per_epoch=N"):
        _net_and_opt("dwa")


def test_dwa_ends_its_epochs_by_itself_with_the_mean_losses():
    net, opt, mtl = _net_and_opt("dwa", steps_per_epoch=2)
    twin = get("dwa")  # the same losses fed by hand, as the harness does per epoch
    twin.reset(2, torch.device("cpu"))
    seen = []
    for _ in range(6):
        opt.zero_grad()
        losses = net.losses()
        seen.append(losses.detach())
        mtl.backward(losses)
        opt.step()
        if len(seen) % 2 == 0:
            twin.end_epoch(torch.stack(seen[-2:]).mean(0))
    # Two finished epochs before the last one: the weights left 1.
    assert not torch.allclose(twin._weights, torch.ones(2))
    torch.testing.assert_close(mtl.strategy._weights, twin._weights)
    with pytest.raises(RuntimeError, match="runs by itself every 2 steps"):
        mtl.end_epoch()


def test_manual_end_epoch_averages_the_steps_it_saw():
    net, opt, mtl = _net_and_opt("dwa", steps_per_epoch="manual")
    twin = get("dwa")
    twin.reset(2, torch.device("cpu"))
    for _ in range(3):
        seen = []
        for _ in range(2):
            opt.zero_grad()
            losses = net.losses()
            seen.append(losses.detach())
            mtl.backward(losses)
            opt.step()
        mtl.end_epoch()
        twin.end_epoch(torch.stack(seen).mean(0))
    torch.testing.assert_close(mtl.strategy._weights, twin._weights)


def test_gradient_strategy_needs_the_shared_parameters_named():
    net = _TwoTasks(width=8)
    with pytest.raises(ValueError, match="pass shared="):
        MTLBackward(get("upgrad"), net, torch.optim.SGD(net.parameters(), lr=0.1))


def test_multi_batch_strategy_asks_for_its_batches():
    net, _, mtl = _net_and_opt("sdmgrad")
    with pytest.raises(ValueError, match="takes 3 loss vector"):
        mtl.backward(net.losses())
    mtl.backward([net.losses() for _ in range(3)])


TASKS = tuple(Task(n, "regression") for n in "abcd")


@pytest.mark.parametrize(("strategy", "engine"), [("pcgrad", "loop"), ("upgrad", "gramian"),
                                                  ("uw", "loop"), ("imtl", "vmap")])
def test_gradients_are_the_harness_engines(strategy, engine):
    torch.manual_seed(0)
    model = sharing.get("hps", (5,), TASKS)
    x, y = torch.randn(16, 5), torch.randn(16, 4)

    def losses() -> torch.Tensor:
        out = model(x)
        return torch.stack([t.loss(out[t.name], y[:, i]) for i, t in enumerate(TASKS)])

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mtl = MTLBackward(get(strategy), model, opt, engine=engine, num_tasks=4,
                      add_parameters=True)
    mtl.backward(losses(), features=model.representation)
    mine = [p.grad.clone() for p in [*model.parameters(), *mtl.parameters()]]

    ref = get(strategy)
    ref.reset(4, torch.device("cpu"))
    ctx = step_context(model, ref, ENGINES[engine](), opt)
    opt.zero_grad(set_to_none=True)
    for p in ref.parameters():
        p.grad = None
    apply_gradients([losses()], ctx)
    theirs = [p.grad for p in [*model.parameters(), *ref.parameters()]]
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("join", "per_head"), [("stack", 1), ("cat", 4)])
def test_each_head_is_differentiated_once_per_step(join: str, per_head: int) -> None:
    """O(T): a stack of the T losses is split at its inputs, so each task's backward runs
    through its own head only; losses joined otherwise send all T through every head."""
    torch.manual_seed(0)
    model = sharing.get("hps", (5,), TASKS)
    calls = dict.fromkeys(model.towers, 0)
    for name, tower in model.towers.items():
        def count(*_: object, name: str = name) -> None:
            calls[name] += 1
        tower.register_full_backward_hook(count)
    x, y = torch.randn(16, 5), torch.randn(16, 4)
    out = model(x)
    scalars = [t.loss(out[t.name], y[:, i]) for i, t in enumerate(TASKS)]
    losses = (torch.stack(scalars) if join == "stack"
              else torch.cat([v.reshape(1) for v in scalars]))
    mtl_backward(losses, get("pcgrad"), model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert calls == dict.fromkeys(model.towers, per_head)


def test_mtl_backward_keeps_one_lifecycle_per_strategy():
    net = _TwoTasks(width=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    famo = get("famo")
    first = mtl_backward(net.losses(), famo, net, opt, shared=net.trunk.parameters())
    opt.step()
    with pytest.raises(RuntimeError, match="after_step"):
        mtl_backward(net.losses(), famo, net, opt)
    with torch.no_grad():
        first.after_step(net.losses())
    assert mtl_backward(net.losses(), famo, net, opt) is first


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Using a strategy in your own training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.usefixtures("one_thread")
def test_readme_own_loop_example_runs_and_trains_both_tasks(capsys):
    namespace: dict[str, object] = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    final = [float(v) for v in re.findall(r"[\d.e-]+", capsys.readouterr().out)]
    assert len(final) == 2
    assert final[0] < 0.05 and final[1] < 0.2  # both tasks learnt (start: ~4 and ~0.7)
