"""Sweeps: the Optuna preset returns val/dice to the sweeper; a failed run does not end a sweep; a sweep run again
in its folder resumes its runs; the SLURM launcher preset composes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers.cli import TINY_2D, run_cli
from segtrain.events import read_scalars

pytestmark = pytest.mark.slow

# Runs that learn in a few seconds (val/dice well above 0, so that the value the sweeper gets means something)
LEARNING_2D = [*TINY_2D, "data.synthetic.num_cases=8", "data.patches_per_epoch=32", "trainer.max_epochs=3"]


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def runs_of(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())


def test_optuna_preset_runs_two_trials_and_returns_val_dice(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = ok(run_cli(["hparams_search=optuna_tversky", *LEARNING_2D, "hydra.sweeper.n_trials=2",
                       f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir))  # no -m: the preset is a multirun
    trials = runs_of(sweep)
    assert len(trials) == 2
    for trial in trials:  # the searched values name the run, rounded; the run used them exactly
        assert re.fullmatch(r"\d_loss\.alpha=[\d.]+,loss\.beta=[\d.]+,optim\.optimizer\.lr=[\d.e-]+_synthetic2d", trial.name), trial.name
        config = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())
        assert config["loss"]["name"] == "tversky" and config["optimized_metric"] == "val/dice"
        assert 0.1 <= config["loss"]["alpha"] <= 0.9 and 1e-4 <= config["optim"]["optimizer"]["lr"] <= 1e-2
    finals = {trial.name: read_scalars(trial)["val/dice"][-1].value for trial in trials}
    assert max(finals.values()) > 0.2  # the trials learned
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(finals.values()), abs=1e-6)  # what each run returned
    best = max(finals, key=finals.get)
    best_config = yaml.safe_load((sweep / best / ".hydra" / "config.yaml").read_text())
    assert result["best_params"]["loss.alpha"] == pytest.approx(best_config["loss"]["alpha"])
    assert "\x1b[" not in proc.stdout + proc.stderr  # Optuna's colored handler is off: plain lines in job logs
    assert f"2 of 2 run(s) finished in {sweep}; best trial: {sweep / 'optimization_results.yaml'}" in proc.stdout


def test_a_failed_run_does_not_end_the_sweep_and_the_sweep_exits_with_its_code(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *LEARNING_2D, "trainer.max_epochs=1", "optim.optimizer.lr=1e6,0.01",
                    f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]  # the NaN run's code, after every run of the sweep
    assert "Traceback" not in proc.stderr
    diverged, good = runs_of(sweep)
    assert diverged.name.startswith("0_") and "lr=1e+06" in diverged.name
    assert (good / "checkpoints" / "last.ckpt").is_file()  # the run after the failed one trained
    code, _, line = (diverged / "failed.txt").read_text().strip().partition("\t")
    assert code == "3" and line.startswith("error: non-finite")
    assert not (good / "failed.txt").exists()
    assert f"segtrain: sweep: 1 of 2 run(s) finished in {sweep}" in proc.stderr
    assert f"segtrain: sweep: failed (exit 3): {diverged.name}: error: non-finite" in proc.stderr
    from segtrain.compare import run_names

    assert run_names([diverged, good]) == ["optim.optimizer.lr=1e+06 [failed, exit 3]", "optim.optimizer.lr=0.01"]


def test_an_optuna_study_where_every_trial_fails_ends_with_the_report_not_a_traceback(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    space = 'hydra.sweeper.params={loss.alpha: "interval(0.1, 0.9)", optim.optimizer.lr: "interval(1e5, 1e6)"}'
    proc = run_cli(["hparams_search=optuna_tversky", *LEARNING_2D, "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
                    space, f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "Got 'None'" not in proc.stdout
    assert "no trial finished, so there is no best trial" in proc.stdout
    assert f"segtrain: sweep: 0 of 2 run(s) finished in {sweep}" in proc.stderr
    assert proc.stderr.count("segtrain: sweep: failed (exit 3): ") == 2
    assert not (sweep / "optimization_results.yaml").exists()


def test_a_sweep_run_again_in_its_folder_resumes_its_runs(tmp_path, cache_dir):
    """What a requeued SLURM job of the launcher does: the same job config again, a checkpoint in its folder."""
    sweep = tmp_path / "sweep"
    args = ["-m", *LEARNING_2D, "loss=dice,dice_ce", f"hydra.sweep.dir={sweep}"]  # runs named by the swept key
    ok(run_cli([*args, "trainer.max_epochs=1"], tmp_path, cache_dir))
    runs = runs_of(sweep)
    first = {run: [v.step for v in read_scalars(run)["train/loss"]] for run in runs}
    proc = ok(run_cli([*args, "trainer.max_epochs=2"], tmp_path, cache_dir))
    assert runs_of(sweep) == runs and proc.stdout.count("finished 2 epoch(s), 16 steps") == 2
    for run in runs:
        assert f"{run} holds checkpoints/last.ckpt: resuming that run" in proc.stderr
        steps = [v.step for v in read_scalars(run)["train/loss"]]
        assert steps[:len(first[run])] == first[run] and len(steps) == len(set(steps)) == 16


def test_slurm_launcher_preset_composes_from_the_trainer_settings():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segtrain.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=slurm", "trainer.devices=8",
                                          "hydra.launcher.partition=gpu", "hparams_search=optuna_tversky"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert OmegaConf.select(cfg, "hydra.launcher.tasks_per_node") == 8 == OmegaConf.select(cfg, "hydra.launcher.gpus_per_node")
    assert OmegaConf.select(cfg, "hydra.launcher.nodes") == cfg.trainer.num_nodes == 2
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.trainer.plugins[0].auto_requeue is True
    assert list(cfg.slurm.requeue_on) == ["SIGUSR1", "SIGUSR2", "SIGTERM"]


@pytest.mark.parametrize("override, expected", [
    ("hydra/launcher=slrum", "hydra/launcher=slrum: there is no hydra/launcher 'slrum'; did you mean slurm? options: basic, slurm,"),
    ("hydra/sweeper=optuan", "hydra/sweeper=optuan: there is no hydra/sweeper 'optuan'; did you mean optuna? options: basic, optuna"),
])
def test_an_unknown_launcher_or_sweeper_is_one_line(override, expected):
    from segtrain.cli import config_dir
    from segtrain.config_check import check_command_line
    from segtrain.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        check_command_line([override, "debug=tiny"], config_dir())
    assert str(info.value).startswith(expected), str(info.value)


def test_a_sweep_plugin_that_is_not_installed_says_what_to_install(monkeypatch):
    """Without the sweep extra: hydra/launcher=slurm, and a preset that selects the Optuna sweeper, are one line."""
    import importlib.util

    from segtrain import config_check
    from segtrain.cli import config_dir
    from segtrain.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_") else real(name, *a))
    with pytest.raises(ConfigError, match=r"^hydra/launcher=slurm: needs the SLURM launcher \(hydra-submitit-launcher\), "
                                          r"which is not installed: pip install 'segtrain\[sweep\]'$"):
        config_check.check_command_line(["hydra/launcher=slurm"], config_dir())
    # what Hydra says when a preset's `override /hydra/sweeper: optuna` finds no such option
    error = Exception("In 'hparams_search/optuna_tversky': Could not find 'hydra/sweeper/optuna' Available options: basic")
    assert config_check._composition_error(error, ["hparams_search=optuna_tversky"]) == (
        "hparams_search=optuna_tversky: needs the Optuna sweeper (hydra-optuna-sweeper), which is not installed: "
        "pip install 'segtrain[sweep]'")


def test_an_optuna_study_in_a_database_continues_in_the_next_sweep(tmp_path, cache_dir):
    """hydra.sweeper.storage=sqlite:///...: a killed or finished search goes on (optuna 2 needs SQLAlchemy 1.4: the lock)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for launch in (1, 2):
        ok(run_cli(["hparams_search=optuna_tversky", *TINY_2D, "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}",
                    "hydra.sweeper.study_name=liver", f"hydra.sweep.dir={tmp_path / f'sweep{launch}'}"], tmp_path, cache_dir))
    study = optuna.load_study(study_name="liver", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].params != study.trials[1].params
