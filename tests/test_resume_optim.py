"""A resumed run learns with the optimiser settings it announces (segtrain/optim.py ``apply_to_restored``).

Lightning restores the optimizer and scheduler of a checkpoint, hyper-parameters included: a learning rate
changed with ``resume.allow_changes=true`` used to be announced and then ignored.
"""

from __future__ import annotations

import functools
import shutil

import pytest
import torch

from helpers.cli import TINY_2D, run_cli
from segtrain.errors import ConfigError
from segtrain.events import read_scalars
from segtrain.optim import apply_to_restored


def _trained(optimizer_factory, scheduler_factory, steps=5):
    """An optimizer and scheduler after ``steps`` steps, saved and restored as Lightning does (state dicts)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = optimizer_factory(params=layer.parameters())
    scheduler = scheduler_factory(optimizer=optimizer)
    for _ in range(steps):
        layer(torch.randn(4, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    restored_optimizer = optimizer_factory(params=layer.parameters())
    restored_optimizer.load_state_dict(optimizer.state_dict())
    restored_scheduler = scheduler_factory(optimizer=restored_optimizer)
    restored_scheduler.load_state_dict(scheduler.state_dict())
    return layer, restored_optimizer, restored_scheduler


P = functools.partial
ADAMW = dict(lr=0.003, weight_decay=3e-5, betas=(0.9, 0.999), eps=1e-8)
SGD = dict(lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
POLY = dict(total_iters=20, power=0.9)


@pytest.mark.parametrize("kind, key, value", [
    ("adamw", "lr", 0.1), ("adamw", "weight_decay", 0.01), ("adamw", "betas", (0.8, 0.99)), ("adamw", "eps", 1e-6),
    ("adamw", "amsgrad", True), ("sgd", "lr", 0.05), ("sgd", "momentum", 0.9), ("sgd", "nesterov", False),
    ("sgd", "weight_decay", 1e-4), ("adamw", "weight_decay", 0.0),
])
def test_every_optimizer_setting_changed_on_resume_is_applied_and_the_moments_stay(kind, key, value):
    cls, settings = (torch.optim.AdamW, ADAMW) if kind == "adamw" else (torch.optim.SGD, SGD)
    schedule = P(torch.optim.lr_scheduler.PolynomialLR, **POLY)
    _, optimizer, scheduler = _trained(P(cls, **settings), schedule)
    moments = {k: v.clone() for k, v in optimizer.state[optimizer.param_groups[0]["params"][0]].items() if torch.is_tensor(v)}
    changes = apply_to_restored(optimizer, scheduler, P(cls, **{**settings, key: value}), schedule)
    group = optimizer.param_groups[0]
    assert group["initial_lr" if key == "lr" else key] == value and any(c.startswith(f"{key} ") for c in changes)
    state = optimizer.state[group["params"][0]]
    assert all(torch.equal(state[k], v) for k, v in moments.items())  # what the run learned is kept
    if key == "lr":  # the schedule restarts from the new rate at the same position: lr = new · (1 - 5/20)^0.9
        assert group["lr"] == pytest.approx(value * (1 - 5 / 20) ** 0.9) and scheduler.base_lrs == [value]
        assert scheduler.last_epoch == 5 and scheduler.get_last_lr() == [pytest.approx(group["lr"])]
    else:
        assert group["lr"] == pytest.approx(settings["lr"] * (1 - 5 / 20) ** 0.9)


@pytest.mark.parametrize("key, value", [("power", 2.0), ("total_iters", 40)])
def test_every_schedule_setting_changed_on_resume_is_applied_at_the_schedules_position(key, value):
    optimizer_factory = P(torch.optim.AdamW, **ADAMW)
    _, optimizer, scheduler = _trained(optimizer_factory, P(torch.optim.lr_scheduler.PolynomialLR, **POLY))
    changes = apply_to_restored(optimizer, scheduler, optimizer_factory,
                                P(torch.optim.lr_scheduler.PolynomialLR, **{**POLY, key: value}))
    settings = {**POLY, key: value}
    expected = 0.003 * (1 - 5 / settings["total_iters"]) ** settings["power"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected) and getattr(scheduler, key) == value
    assert changes == [f"schedule {key} {POLY[key]} → {value}"]
    scheduler.step()  # and it goes on from there
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        0.003 * (1 - 6 / settings["total_iters"]) ** settings["power"])


def test_an_unchanged_resume_changes_nothing():
    optimizer_factory, schedule = P(torch.optim.AdamW, **ADAMW), P(torch.optim.lr_scheduler.PolynomialLR, **POLY)
    _, optimizer, scheduler = _trained(optimizer_factory, schedule)
    before = (optimizer.state_dict(), scheduler.state_dict())
    assert apply_to_restored(optimizer, scheduler, optimizer_factory, schedule) == []
    assert optimizer.state_dict()["param_groups"] == before[0]["param_groups"] and scheduler.state_dict() == before[1]


def test_the_kind_of_optimizer_or_schedule_cannot_change_on_resume(cache_dir, tmp_path):
    from helpers.cli import compose
    from segtrain.resume import resumed_config

    stored = compose(["optim=adamw"], cache_dir=cache_dir)
    from omegaconf import OmegaConf

    run = {"config": OmegaConf.to_container(stored, resolve=True), "config_source": OmegaConf.to_container(stored)}
    for overrides, named in ((["optim=sgd"], "optim.optimizer._target_"),
                             (["optim.scheduler=null"], "optim.scheduler"), (["optim.interval=epoch"], "optim.interval")):
        cfg = compose([*overrides, "resume.allow_changes=true"], cache_dir=cache_dir)
        with pytest.raises(ConfigError, match=f"resume: {named} .*keeps its optimiser and schedule kinds"):
            resumed_config(cfg, run, overrides, {"optim", "loss", "model", "data"})


@pytest.mark.slow
def test_a_learning_rate_changed_on_resume_is_the_one_the_run_learns_with(tmp_path, cache_dir):
    """The issue's trial: resume with optim.optimizer.lr=0.1: train/lr-AdamW continues from 0.1's schedule, not 0.003's."""
    base = [*TINY_2D, "trainer.max_epochs=2", "data.patches_per_epoch=16", "trainer.log_every_n_steps=1"]
    run = tmp_path / "run"
    assert run_cli([*base, f"hydra.run.dir={run}"], tmp_path, cache_dir).returncode == 0
    same, changed = tmp_path / "same", tmp_path / "changed"
    shutil.copytree(run, same)
    shutil.copytree(run, changed)
    assert run_cli([f"resume={same}", "trainer.max_epochs=4"], tmp_path, cache_dir).returncode == 0
    proc = run_cli([f"resume={changed}", "trainer.max_epochs=4", "optim.optimizer.lr=0.1", "resume.allow_changes=true"],
                   tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the resumed run follows its config: lr 0.003 → 0.1" in proc.stdout + proc.stderr
    old, new = read_scalars(same)["train/lr-AdamW"], read_scalars(changed)["train/lr-AdamW"]
    steps = 16 // 4 * 4  # 4 epochs of 4 steps: the schedule spans 16 steps
    after = [v for v in new if v.step >= 8]
    assert after and all(v.value == pytest.approx(0.1 * (1 - v.step / steps) ** 0.9, rel=1e-4) for v in after if v.step < steps)
    assert all(n.value > 10 * o.value for n, o in zip(after, [v for v in old if v.step >= 8]))
    assert read_scalars(changed)["val/loss"][-1].value != read_scalars(same)["val/loss"][-1].value
