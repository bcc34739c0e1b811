"""Checkpoint files and resume mechanics, in-process: atomic writes, safe reads, generator states,
the resumable training order, event truncation, the resume config and the non-finite guard."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import ROOT, TINY_2D, compose
from segtrain.checkpoints import SafeCheckpointIO, capture_rng_states, read_checkpoint, restore_rng_states
from segtrain.files import atomic_write, remove_stale_temporaries, write_text_atomic
from segtrain.errors import CheckpointError, ConfigError, NonFiniteError


def _segtrain_checkpoint(**extra) -> dict:
    return {"state_dict": {"net.w": torch.ones(3)}, "segtrain": {"config": {}, "spec": {}}, **extra}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic files -------------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"

    def broken(handle):
        handle.write(b"half of a new version")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_write_without_o_tmpfile_uses_a_named_file_it_removes(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_TMPFILE")
    target = tmp_path / "b.txt"
    write_text_atomic(target, "one")
    with pytest.raises(OSError):
        atomic_write(target, lambda handle: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    assert target.read_text() == "one" and _temporaries(tmp_path) == []


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".last.ckpt.{dead_pid}.0123abcd.tmp").write_bytes(b"partial")
    (tmp_path / f".last.ckpt.{os.getppid()}.0123abcd.tmp").write_bytes(b"a live writer's")
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [f".last.ckpt.{dead_pid}.0123abcd.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".last.ckpt.{os.getppid()}.0123abcd.tmp", "last.ckpt"]


@pytest.mark.parametrize("o_tmpfile", [True, False], ids=["unnamed-temporary", "named-temporary"])
def test_sigkill_during_checkpoint_writes_never_leaves_a_broken_file(tmp_path, o_tmpfile):
    """A writer SIGKILLed 15 times at random moments leaves a whole, loadable last.ckpt every time; with O_TMPFILE
    no stray file at all (the unnamed file dies with the process), without it none once the next run has started."""
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not o_tmpfile:
        env["SEGTRAIN_TEST_NO_O_TMPFILE"] = "1"
    script = ROOT / "tests" / "helpers" / "write_checkpoints.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "15", "0"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rounds = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rounds) == 15 and all(r["whole"] for r in rounds)
    assert rounds[-1]["version"] > 3  # later writes were killed too, not only the first
    if o_tmpfile:
        assert all(r["temporaries"] == [] for r in rounds)
    remove_stale_temporaries(tmp_path)  # what the next run does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# -- SafeCheckpointIO -----------------------------------------------------------------------------
def test_checkpoint_io_refuses_non_finite_weights_and_keeps_the_previous_file(tmp_path):
    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_segtrain_checkpoint(), path)
    bad = _segtrain_checkpoint(state_dict={"net.w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(NonFiniteError, match="refused to write .*last.ckpt: 1 tensor"):
        io.save_checkpoint(bad, path)
    bad = _segtrain_checkpoint(optimizer_states=[{"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}])
    with pytest.raises(NonFiniteError, match="optimizer 0 state"):
        io.save_checkpoint(bad, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["net.w"], torch.ones(3))


def test_checkpoint_io_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_segtrain_checkpoint(), path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as info:
        io.save_checkpoint(_segtrain_checkpoint(), path)
    assert "the disk is full" in str(info.value) and "; the previous checkpoint is intact" in str(info.value)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert read_checkpoint(path)["state_dict"]["net.w"].sum() == 3
    assert _temporaries(tmp_path) == []


def test_run_checkpoint_keeps_its_bookkeeping_in_a_copied_folder(tmp_path):
    from segtrain.callbacks.checkpoint import RunCheckpoint

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    state = {"monitor": "val/dice", "best_model_score": torch.tensor(0.8), "best_model_path": str(old / "best.ckpt"),
             "current_score": torch.tensor(0.7), "dirpath": str(old), "best_k_models": {str(old / "best.ckpt"): torch.tensor(0.8)},
             "kth_best_model_path": str(old / "best.ckpt"), "kth_value": torch.tensor(0.8), "last_model_path": str(old / "last.ckpt")}
    fresh = RunCheckpoint(new)
    fresh.load_state_dict(dict(state))  # a new run from that checkpoint: nothing of it in this folder
    assert fresh.best_model_score is None and fresh.best_k_models == {}
    new.mkdir(parents=True)
    (new / "best.ckpt").write_bytes(b"the copy")
    copied = RunCheckpoint(new)
    copied.load_state_dict(dict(state))
    assert float(copied.best_model_score) == pytest.approx(0.8) and copied.best_model_path == str(new / "best.ckpt")
    assert list(copied.best_k_models) == [str(new / "best.ckpt")] and copied.kth_best_model_path == str(new / "best.ckpt")


# -- reading ------------------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch payload-ran",))


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    good = folder / "good.ckpt"
    torch.save(_segtrain_checkpoint(), good)
    cases = {
        "missing": (folder / "missing.ckpt", "no such checkpoint"),
        "folder": (folder, "is not a file"),
        "text": (folder / "notes.ckpt", "is a text file, not a checkpoint (it begins 'epoch 3, loss 0.1')"),
        "empty": (folder / "empty.ckpt", "is empty"),
        "truncated": (folder / "truncated.ckpt", "truncated or not a PyTorch checkpoint"),
        "tensor": (folder / "tensor.ckpt", "holds a Tensor, not a segtrain checkpoint"),
        "list": (folder / "list.ckpt", "holds a list, not a segtrain checkpoint"),
        "foreign": (folder / "foreign.ckpt", "is not a segtrain checkpoint"),
        "pickle": (folder / "payload.ckpt", "pickle payload"),
    }
    cases["text"][0].write_text("epoch 3, loss 0.1\n" * 5)
    cases["empty"][0].write_bytes(b"")
    cases["truncated"][0].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(torch.zeros(3), cases["tensor"][0])
    torch.save([1, 2], cases["list"][0])
    torch.save({"state_dict": {}}, cases["foreign"][0])
    torch.save(_segtrain_checkpoint(segtrain={"config": _Payload()}), cases["pickle"][0])
    return cases


def test_read_checkpoint_turns_every_bad_file_into_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, (path, expected) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert f"ckpt_path={path}" in message and expected in message and "\n" not in message, (name, message)
    assert not (tmp_path / "payload-ran").exists()
    assert read_checkpoint(tmp_path / "good.ckpt")["segtrain"] == {"config": {}, "spec": {}}


def test_generator_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    states = capture_rng_states()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    torch.save({"rng": states}, tmp_path / "rng.ckpt")
    random.random(), np.random.rand(), torch.rand(5)
    restore_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])


# -- the training order ---------------------------------------------------------------------------------
def test_epoch_sampler_is_a_function_of_the_epoch_and_shards_ranks(tmp_path):
    from segtrain.data.loaders import EpochSampler

    data = list(range(10))
    one = EpochSampler(data, seed=3)
    one.set_epoch(2)
    order = list(one)
    assert sorted(i for _, i in order) == data and {e for e, _ in order} == {2}
    again = EpochSampler(data, seed=3)
    again.set_epoch(2)
    again.skip = 4
    assert list(again) == order[4:] and list(again) == order  # skip applies to one iteration only
    other = EpochSampler(data, seed=3)
    other.set_epoch(3)
    assert list(other) != order
    shards = [EpochSampler(data, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(2)
    assert sorted(i for s in shards for _, i in s) == data


def test_resumable_loader_continues_an_epoch_where_it_stopped():
    from segtrain.data.loaders import EpochSampler, ResumableLoader

    class Items:  # addressed by (epoch, index), as _Repeat is
        def __len__(self):
            return 12

        def __getitem__(self, key):
            return key

    def loader():
        data = Items()
        return ResumableLoader(data, batch_size=3, sampler=EpochSampler(data, seed=0), collate_fn=lambda b: b)

    full = loader()
    full.sampler.set_epoch(1)
    batches = list(full)
    stopped = loader()
    stopped.sampler.set_epoch(1)
    iterator = iter(stopped)
    first = [next(iterator), next(iterator)]
    state = stopped.state_dict()
    assert state == {"epoch": 1, "batches": 2} and first == batches[:2]
    resumed = loader()
    resumed.load_state_dict(state)
    assert list(resumed) == batches[2:]
    assert resumed.state_dict() == {"epoch": 1, "batches": 4}
    ended = loader()
    ended.load_state_dict({"epoch": 1, "batches": 4})  # saved at the epoch's end: the next one starts
    assert ended.sampler.epoch == 2 and len(list(ended)) == 4


def test_a_patch_depends_on_its_epoch_and_index_only(cache_dir):
    from segtrain.data import build_datamodule
    from segtrain.data.loaders import _Repeat

    cfg = compose(TINY_2D, cache_dir=cache_dir)
    data = build_datamodule(cfg.data, seed=7)
    data.setup("fit")
    repeat = _Repeat(data.train_set, 8, seed=7)
    forward = [repeat[(1, i)]["image"] for i in range(8)]
    backward = [repeat[(1, i)]["image"] for i in reversed(range(8))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert not torch.equal(repeat[(2, 0)]["image"], forward[0]) or not torch.equal(repeat[(2, 1)]["image"], forward[1])


# -- events -------------------------------------------------------------------------------------------
def test_truncate_events_drops_what_came_after_the_checkpoint(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from segtrain.events import read_scalars, truncate_events

    writer = SummaryWriter(tmp_path)
    for step in range(4):
        writer.add_scalar("train/loss", step, step, walltime=100.0 + step)
    writer.add_scalar("val_summary/best_val_dice", 0.5, 0, walltime=100.0)
    writer.add_scalar("train/loss", 4, 4, walltime=200.0)
    writer.add_scalar("train/loss", 5, 5, walltime=201.0)
    writer.close()
    assert truncate_events(tmp_path, wall_time=102.5) == 4  # steps 3, 4 and 5, and the val_summary/ record
    assert [s.step for s in read_scalars(tmp_path)["train/loss"]] == [0, 1, 2]
    assert "val_summary/best_val_dice" not in read_scalars(tmp_path)
    assert truncate_events(tmp_path, wall_time=102.5) == 0  # nothing left to drop: the file stays as it is


# -- resume: command line and config --------------------------------------------------------------------
def _run_dir(root: Path, *checkpoints: str) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    for offset, name in enumerate(checkpoints):
        path = root / "checkpoints" / name
        torch.save(_segtrain_checkpoint(segtrain={"config": {}, "spec": {}, "choices": {"loss": "tversky", "data": "nifti"}}), path)
        os.utime(path, ns=(10**9 * (1000 + offset),) * 2)
    return root


def test_prepare_argv_resumes_in_the_run_directory_from_its_newest_checkpoint(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from segtrain.resume import prepare_argv

    def parsed(argv):
        return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(prepare_argv(argv))}

    run = _run_dir(tmp_path / "run", "last.ckpt", "interrupted.ckpt")
    argv = prepare_argv(["loss=dice", f"resume={run}", "trainer.max_epochs=9"])
    assert argv[:3] == ["data=nifti", "loss=dice", "trainer.max_epochs=9"]  # the run's groups, unless typed
    values = parsed(["loss=dice", f"resume={run}", "trainer.max_epochs=9"])
    assert values["ckpt_path"] == str(run / "checkpoints" / "interrupted.ckpt")  # the newer one
    assert values["hydra.run.dir"] == str(run) and values["resume.dir"] == str(run)
    assert values["hydra.output_subdir"].startswith(".hydra/resumed/")
    assert parsed([f"ckpt_path={run}/checkpoints/last.ckpt"])["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert parsed(["ckpt_path=last", f"hydra.run.dir={run}"])["resume.dir"] == str(run)
    elsewhere = parsed([f"ckpt_path={run}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path / 'new'}"])
    assert "resume.dir" not in elsewhere  # a new run that starts from the checkpoint
    assert prepare_argv(["loss=dice"]) == ["loss=dice"]


def test_prepare_argv_quotes_run_folders_named_after_overrides(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from segtrain.resume import prepare_argv

    run = _run_dir(tmp_path / "2026-11-21_10-00-00_loss=tversky,loss.alpha=0.3", "last.ckpt")
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(prepare_argv([f"resume={run}"]))}
    assert parsed["hydra.run.dir"] == str(run) and parsed["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("argv, expected", [
    (["ckpt_path=last"], "ckpt_path=last needs the run"),
    (["-m", "loss=dice,ce", "resume=/x"], "resume each run of a sweep separately"),
    (["resume=/does/not/exist"], "not a segtrain run directory"),
])
def test_prepare_argv_errors(argv, expected):
    from segtrain.resume import prepare_argv

    with pytest.raises(ConfigError, match=expected):
        prepare_argv(argv)


def test_prepare_argv_without_a_checkpoint_yet(tmp_path):
    from segtrain.resume import prepare_argv

    run = _run_dir(tmp_path / "run")
    with pytest.raises(ConfigError, match="saved no last.ckpt or interrupted.ckpt yet"):
        prepare_argv([f"resume={run}"])


def test_resumed_config_keeps_the_run_and_refuses_learned_changes(cache_dir, tmp_path):
    from omegaconf import OmegaConf

    from segtrain.resume import resumed_config

    stored_cfg = compose(["loss=tversky", "loss.alpha=0.3", "trainer.max_epochs=3"], cache_dir=cache_dir, run_dir=tmp_path)
    stored = {"config": OmegaConf.to_container(stored_cfg, resolve=True),
              "config_source": OmegaConf.to_container(stored_cfg, resolve=False)}
    groups = {"loss", "model", "data", "optim", "trainer", "logger", "callbacks", "paths", "experiment"}

    now = compose(["trainer.max_epochs=6", "data.num_workers=2"], cache_dir=cache_dir, run_dir=tmp_path)
    merged, changes = resumed_config(now, stored, ["trainer.max_epochs=6", "data.num_workers=2"], groups)
    assert merged.loss.name == "tversky" and merged.loss.alpha == 0.3 and merged.trainer.max_epochs == 6
    assert merged.data.num_workers == 2 and changes == []

    # the run's groups are selected by prepare_argv (loss=tversky), the user's overrides follow
    for overrides, named in ((["loss=dice"], "loss"), (["loss.alpha=0.5"], "loss.alpha (0.3 → 0.5)"),
                             (["model.channels=[8,16,32,64]"], "model.channels"), (["seed=1"], "seed (42 → 1)")):
        cfg = compose(["loss=tversky", *overrides], cache_dir=cache_dir, run_dir=tmp_path)
        with pytest.raises(ConfigError) as info:
            resumed_config(cfg, stored, overrides, groups)
        assert named in str(info.value) and "resume.allow_changes=true" in str(info.value)
    cfg = compose(["loss=tversky", "loss.alpha=0.5", "resume.allow_changes=true"], cache_dir=cache_dir, run_dir=tmp_path)
    merged, changes = resumed_config(cfg, stored, ["loss.alpha=0.5", "resume.allow_changes=true"], groups)
    assert merged.loss.alpha == 0.5 and merged.loss.name == "tversky" and changes == ["loss.alpha (0.3 → 0.5)"]
    with pytest.raises(ConfigError, match="experiment=small_lesions: a preset cannot be applied to a resumed run"):
        resumed_config(compose(["experiment=small_lesions"], cache_dir=cache_dir), stored, ["experiment=small_lesions"], groups)


def test_a_write_that_torch_reports_as_runtime_error_is_one_checkpoint_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    """A full disk surfaces from torch.save as RuntimeError('... unexpected pos ...'), not OSError."""
    from segtrain.checkpoints import SafeCheckpointIO

    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    before = path.read_bytes()

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4224 vs 4118")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last.ckpt: .*; the previous checkpoint is intact"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# -- the non-finite guard -------------------------------------------------------------------------------
def _fit_toy(tmp_path, nan_steps: set[int], callbacks=(), **guard):
    from lightning.pytorch import LightningModule, Trainer

    from segtrain.callbacks.guard import NonFiniteGuard

    class Toy(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.weights = []

        def training_step(self, batch, batch_idx):
            self.weights.append(self.layer.weight.detach().clone())
            loss = self.layer(batch["x"]).pow(2).mean()
            return loss * float("nan") if self.global_step in nan_steps else loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            items = [{"x": torch.ones(2), "id": f"case{i}"} for i in range(6)]
            return torch.utils.data.DataLoader(items, batch_size=2, collate_fn=lambda b: {
                "x": torch.stack([i["x"] for i in b]), "id": [i["id"] for i in b]})

    module = Toy()
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=bool(callbacks), enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[NonFiniteGuard(**guard), *callbacks], default_root_dir=tmp_path)
    trainer.fit(module)
    return module, trainer


def test_guard_stops_on_a_nan_loss_naming_step_and_cases(tmp_path):
    with pytest.raises(NonFiniteError) as info:
        _fit_toy(tmp_path, nan_steps={4})
    message = str(info.value)
    assert message.startswith("non-finite loss (loss nan) at step 4 (epoch 1); batch cases: case2, case3")
    assert "optim.optimizer.lr" in message and "guard.on_nonfinite=skip" in message and "\n" not in message


def test_guard_reads_its_flag_before_every_checkpoint_and_none_follows_a_bad_step(tmp_path):
    """The flag is read at the logging interval (50 steps here: never), at checkpoint writes and epoch ends:
    the checkpoint after the bad step is not written, those before it are, with finite weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    with pytest.raises(NonFiniteError, match=r"^non-finite loss \(loss nan\) at step 1 \(epoch 0\); batch cases: case2, case3"):
        _fit_toy(tmp_path, nan_steps={1}, callbacks=[saver])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step=1.ckpt"]
    weights = torch.load(tmp_path / "ckpt" / "step=1.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_guard_skip_leaves_the_weights_alone_and_has_a_budget(tmp_path):
    module, trainer = _fit_toy(tmp_path, nan_steps={1, 4}, on_nonfinite="skip", max_skipped=2)
    guard = next(c for c in trainer.callbacks if type(c).__name__ == "NonFiniteGuard")
    assert guard.skipped == 2 and trainer.global_step == 6
    assert torch.equal(module.weights[1], module.weights[2]) and torch.equal(module.weights[4], module.weights[5])
    assert not torch.equal(module.weights[0], module.weights[1])
    assert all(torch.isfinite(w).all() for w in module.weights)
    with pytest.raises(NonFiniteError, match="2 step\\(s\\) were skipped before"):
        _fit_toy(tmp_path, nan_steps={1, 2, 3}, on_nonfinite="skip", max_skipped=2)


def test_guard_rejects_unknown_settings():
    from segtrain.callbacks.guard import NonFiniteGuard

    with pytest.raises(ValueError, match="guard.on_nonfinite='ignore' is unknown"):
        NonFiniteGuard("ignore")


# -- crashes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["loader", "step"])
def test_a_crash_between_steps_saves_interrupted_ckpt_one_inside_a_step_does_not(tmp_path, where):
    from lightning.pytorch import LightningModule, Trainer

    from segtrain.callbacks.interrupt import GracefulStop
    from segtrain.checkpoints import SafeCheckpointIO

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, index):
            if where == "loader" and index == 6:
                raise RuntimeError("a file that cannot be read")
            return torch.ones(2)

    class Toy(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            if where == "step" and batch_idx == 3:
                raise RuntimeError("out of memory")
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(Broken(), batch_size=2)

    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[GracefulStop(tmp_path)], plugins=[SafeCheckpointIO()],
                      default_root_dir=tmp_path)
    with pytest.raises(RuntimeError):
        trainer.fit(Toy())
    saved = tmp_path / "interrupted.ckpt"
    if where == "loader":  # three steps done, the fourth batch could not be read: a clean state to resume from
        assert torch.load(saved, weights_only=True)["global_step"] == 3
    else:
        assert not saved.exists()
