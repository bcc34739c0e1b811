"""model.channels_last and model.compile: the same numbers as the eager network, the same checkpoint keys, clear errors."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from helpers.cli import TINY_3D, run_cli
from segtrain.errors import ConfigError
from segtrain.models import apply_speed_knobs


def tiny_unet(dims: int):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=dims, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                num_res_units=1, norm="instance", act="PRELU")


@pytest.mark.parametrize("dims, single_cpu_process, layout, expected", [
    (3, True, "auto", torch.channels_last_3d), (3, False, "auto", torch.contiguous_format),
    (2, True, "auto", torch.contiguous_format), (2, False, True, torch.channels_last), (3, True, False, torch.contiguous_format),
])
def test_channels_last_auto_is_on_for_3d_on_a_cpu_only(dims, single_cpu_process, layout, expected):
    net = apply_speed_knobs(tiny_unet(dims), OmegaConf.create({"channels_last": layout}), dims, single_cpu_process=single_cpu_process)
    conv = next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    assert conv.weight.is_contiguous(memory_format=expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_gives_the_eager_outputs_and_gradients(dims):
    image = torch.randn(2, 1, *([16] * dims))
    eager = tiny_unet(dims)
    layout = apply_speed_knobs(tiny_unet(dims), OmegaConf.create({"channels_last": True}), dims)
    outputs = [net(image) for net in (eager, layout)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for out in outputs:
        out.square().mean().backward()
    for a, b in zip(eager.parameters(), layout.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6)
    assert list(layout.state_dict()) == list(eager.state_dict())


def test_compile_keeps_the_checkpoint_keys_and_the_outputs():
    eager = tiny_unet(2)
    compiled = apply_speed_knobs(tiny_unet(2), OmegaConf.create({"compile": True}), 2)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # predict loads it into an uncompiled network
    assert compiled._compiled_call_impl is not None
    image = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(image), eager(image), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("knob, value, message", [("compile", "fastest", "model.compile=fastest: use true, false or a"),
                                                  ("channels_last", "yes", "model.channels_last=yes: use true, false or auto")])
def test_a_bad_knob_value_is_one_line(knob, value, message):
    with pytest.raises(ConfigError, match=message):
        apply_speed_knobs(tiny_unet(2), OmegaConf.create({knob: value}), 2)


@pytest.mark.slow
def test_a_3d_cpu_run_trains_channels_last_and_its_checkpoint_predicts_without_it(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_cli([*TINY_3D, f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["segtrain"]["config"]["model"]["channels_last"] == "auto"  # the default
    weight = next(v for k, v in state["state_dict"].items() if v.dim() == 5)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)  # the run used the layout
    out = tmp_path / "pred"
    images = sorted((cache_dir).glob("synthetic3d_*/imagesTr/*.nii.gz"))[:1]
    assert images
    predicted = run_cli([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"input={images[0]}", f"output_dir={out}"],
                        tmp_path, cache_dir, program="segtrain-predict")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert list(out.glob("*.nii.gz"))


@pytest.mark.slow
def test_gpu_evidence_script_runs_every_part(tmp_path):
    """scripts/gpu_evidence.py (what a GPU session runs for docs/benchmarks.md#gpu), at its smoke size on this CPU:
    every part prints its figures, every command it runs exits 0."""
    import subprocess
    import sys

    from helpers.cli import ROOT
    from segtrain.losses import available_losses

    out = tmp_path / "evidence.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_evidence.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    for network in ("| U-Net (default) | 16×16×16 | 2 |", "| dynunet (planned: "):
        for precision in ("32-true", "bf16-mixed"):
            assert re.search(re.escape(network) + r"[^\n]*" + precision + r" \| [\d.]+ \| [\d.]+ \|", text), (network, precision)
    assert text.count("bf16 / fp32 steps/s = ") == 2
    count = 2 * len(available_losses())
    assert f"{count} of {count} finite" in text
    assert all(f"| {name} | confident |" in text for name in available_losses())
    assert "ratio with guard / without: " in text and text.count("(exit 0") == 3  # guard, default run, data
    assert re.search(r"time: [\d.]+ s = start-up [\d.]+ s", text)  # the default run's split
    assert re.search(r"4 volumes of 48×48×12 voxels at 0.7×0.7×3.0 mm", text)
    assert re.search(r"waiting for data [\d.]+ s/step: [\d.]+% of step time", text)
    for what in ("cut only \\(a GPU augments\\)", "cut and augmented in the workers \\(a CPU trains\\)"):
        assert re.search(r"loader alone, " + what + r": \d+ worker\(s\), batch 2, patch \[32, 32, 8\]: [\d.]+ batches/s", text), what
