"""Sliding-window inference with a trained run's checkpoint; predictions keep the input geometry.

The checkpoint carries the composed config and the data spec (``checkpoint["segtrain"]``), so the
network and the preprocessing are rebuilt exactly as trained. Each prediction is inverted through
the preprocessing (orientation, resampling) with MONAI's ``Invertd`` and written with the
image's own affine: it overlays the input in any viewer.

The windows are ``segtrain.inference.sliding_window_logits``, the function validation and the test
split use. The loop over cases is ours rather than Lightning's ``Trainer.predict``: each case is
preprocessed, predicted, inverted to its own grid and written (staged, then renamed) before the
next is read, so memory holds one case and a killed run leaves whole files; ``Trainer.predict``
gathers every output of an epoch (or needs a writer callback doing the same per batch) and adds
nothing here: no optimisation, no DDP for a folder of cases on one device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segtrain.data.layouts import CHANNEL_FILE, strip_suffix
from segtrain.errors import ConfigError, DataError

log = logging.getLogger("segtrain")



def list_inputs(source, in_channels: int = 1) -> list[tuple[str, list[str]]]:
    """(case id, channel files) for a file, a folder, a dataset root (imagesTs/, imagesTr/, images/), or a list of these.

    In a folder, ``CASE_0000``, ``CASE_0001``, ... are the channel files of case ``CASE`` (nnU-Net's naming;
    for a one-channel model only ``_0000`` is stripped); ``check_inputs`` then checks each case's channels.

    Raises:
        DataError: a missing input, a folder without images, or two inputs with the same case id
            (their predictions would overwrite each other).
    """
    if not isinstance(source, (str, Path)):  # input=[a.nii.gz,b.nii.gz] (a list from the command line)
        cases = [case for item in source for case in list_inputs(item, in_channels)]
        seen: dict[str, str] = {}
        for case_id, files in cases:
            if case_id in seen:
                raise DataError(f"input: {seen[case_id]} and {files[0]} are both case {case_id}; their predictions "
                                "would overwrite each other, so predict them separately")
            seen[case_id] = files[0]
        return cases
    path = Path(source).expanduser()
    if path.is_file():
        stem = strip_suffix(path.name)  # the readers' endings (one registry of formats), else the last suffix
        return [(stem if stem != path.name else path.stem, [str(path)])]
    if not path.is_dir():
        raise DataError(f"input={path}: no such file or folder; pass an image file, a folder of images or a dataset root")
    for sub in ("imagesTs", "imagesTr", "images"):
        if (path / sub).is_dir():
            path = path / sub
            break
    files = sorted(p for p in path.iterdir() if p.is_file() and strip_suffix(p.name) != p.name and not p.name.startswith("."))
    if not files:
        raise DataError(f"input={path}: no image files (.nii.gz, .nii, .nrrd, .png, .tif, .jpg) found")
    cases: dict[str, dict[int, str]] = {}
    for file in files:
        stem = strip_suffix(file.name)
        match = CHANNEL_FILE.match(stem)
        if match and (in_channels > 1 or int(match["channel"]) == 0):
            cases.setdefault(match["case"], {})[int(match["channel"])] = str(file)
        else:
            cases.setdefault(stem, {})[0] = str(file)
    return [(case, [channels[c] for c in sorted(channels)]) for case, channels in sorted(cases.items())]


def check_inputs(cases: list[tuple[str, list[str]]], spec) -> None:
    """Every case is readable and gives the model's channels and dimensions (before anything is predicted).

    Raises:
        DataError: an unreadable file, a 2D image for a 3D model (or the reverse), a wrong channel count.
    """
    from segtrain.data.readers import read_header, reader_for

    for case, files in cases:
        channels = 0
        for file in files:
            if reader_for(file).spatial_dims != spec.spatial_dims and spec.spatial_dims == 3:
                raise DataError(f"{file}: a 2D image, but the model was trained on 3D volumes; pass volumes (.nii.gz, .nrrd)")
            header = read_header(file, spec.spatial_dims)
            if len(header.shape) != spec.spatial_dims:
                raise DataError(f"{file}: {len(header.shape)}D, but the model was trained on {spec.spatial_dims}D images")
            channels += header.channels
        if channels != spec.in_channels:
            hint = (f"pass the {spec.in_channels} channel files CASE_0000..CASE_{spec.in_channels - 1:04d} of each case"
                    if spec.in_channels > 1 else "pass single-channel images (convert colour images to grey)")
            raise DataError(f"{files[0]}: case {case} has {channels} channel(s), the model takes {spec.in_channels} "
                            f"({', '.join(spec.channel_names)}); {hint}")


def load_checkpoint(ckpt_path: str | Path):
    """→ (run config, DataSpec, network with trained weights)."""
    from segtrain.data import DataSpec
    from segtrain.models import build_model

    from segtrain.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(ckpt_path)  # weights_only=True; one line for a missing, broken or foreign file
    meta = checkpoint["segtrain"]
    run_cfg = OmegaConf.create(meta["config"])
    spec = DataSpec.from_dict(meta["spec"])
    net = build_model(run_cfg.model, spec)
    state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return run_cfg, spec, net.eval()


def mirrored(predictor, spatial_dims: int):
    """Test-time mirroring as nnU-Net's: the mean of the logits over every combination of flipped spatial axes.

    ``2**spatial_dims`` forward passes (8 in 3D, 4 in 2D) per window; the flips are undone before averaging.
    """
    import itertools

    axes = [2 + a for a in range(spatial_dims)]
    flips = [list(c) for r in range(1, spatial_dims + 1) for c in itertools.combinations(axes, r)]

    def predict(x: torch.Tensor) -> torch.Tensor:
        total = predictor(x).float()
        for dims in flips:
            total = total + torch.flip(predictor(torch.flip(x, dims)).float(), dims)
        return total / (len(flips) + 1)

    return predict


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device is available here; use device=cpu or device=auto")
    return torch.device(name)


def predict(cfg: DictConfig) -> list[Path]:
    """Segment every input case; returns the written label files (and scores them when ``cfg.label`` is set).

    Each file is written into a hidden staging folder and renamed into place: a killed run leaves
    whole files or none. Every input (and, with ``label``, its label) is checked before the first case.
    """
    from monai.transforms import SaveImage
    from tqdm.auto import tqdm

    from segtrain.files import atomic_write, publish, remove_stale_temporaries, staging_folder
    from segtrain.inference import inference_settings, sliding_window_logits
    from segtrain.data.transforms import inference_transforms, label_dtype, prediction_inverter, with_meta_of
    from segtrain.metrics import class_argmax
    from segtrain.module import main_output

    run_cfg, spec, net = load_checkpoint(cfg.ckpt_path)
    device = _device(str(cfg.device))
    amp = {"bf16": torch.bfloat16, "16": torch.float16, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(str(cfg.precision))
    if str(cfg.precision) not in ("32", "bf16", "16", "bf16-mixed", "16-mixed", "32-true"):
        raise ConfigError(f"precision={cfg.precision} is unknown; use 32, bf16 or 16")
    cases = list_inputs(cfg.input, spec.in_channels)
    check_inputs(cases, spec)
    label = cfg.get("label")
    if label:  # every case has a label, and the scoring settings are valid, before anything is predicted
        from segtrain.evaluation import ScoreSettings
        from segtrain.evaluation.folders import label_files, label_folder

        ScoreSettings.from_config(cfg.evaluation)
        labels = {strip_suffix(p.name) for p in label_files(label_folder(label))}
        missing = [case for case, _ in cases if case not in labels]
        if missing:
            raise DataError(f"label={label}: no label for case {missing[0]!r} ({len(missing)} of {len(cases)} cases lack one); "
                            "pass the label folder of these images, or leave label unset")
    net.to(device)
    settings = inference_settings(OmegaConf.to_container(run_cfg.get("inference", {}), resolve=True),
                                  OmegaConf.to_container(cfg.inference, resolve=True))
    pipeline = inference_transforms(run_cfg.data, spec)
    invert = prediction_inverter(pipeline)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)  # what a killed prediction may have left
    ext = ".png" if spec.spatial_dims == 2 else ".nii.gz"
    predictor = (lambda x: main_output(net(x)))
    if cfg.get("tta"):
        predictor = mirrored(predictor, spec.spatial_dims)
    written = []
    with staging_folder(output_dir) as staging:
        writer = SaveImage(output_dir=staging, output_ext=ext, output_postfix="", separate_folder=False,
                           output_dtype=label_dtype(spec.num_classes), resample=False,
                           print_log=False, scale=None)
        for case_id, files in tqdm(cases, desc="predict", unit="case", disable=not cfg.get("progress", True) or None):
            try:
                data = pipeline({"image": files if len(files) > 1 else files[0]})
            except Exception as err:  # noqa: BLE001 - unreadable input is the user's file problem
                raise DataError(f"{files[0]}: cannot be read or preprocessed ({str(err).splitlines()[0][:200]})") from None
            image = data["image"].unsqueeze(0).to(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = sliding_window_logits(image, predictor, settings, spec.patch_size)
            if not torch.isfinite(logits).all():
                raise DataError(f"{files[0]}: the network gave NaN/Inf for this case (precision={cfg.precision}); "
                                "try precision=32, or check the image's intensities")
            data["pred"] = with_meta_of(class_argmax(logits)[0].cpu().to(label_dtype(spec.num_classes)), data["image"])
            restored = invert(data)["pred"]
            writer(restored, filename=str(staging / case_id))
            written.append(publish(staging / f"{case_id}{ext}", output_dir / f"{case_id}{ext}"))
            if cfg.get("save_probabilities"):
                data["pred"] = with_meta_of(torch.softmax(logits.float(), dim=1)[0].cpu(), data["image"])
                probabilities = prediction_inverter(pipeline, nearest=False)(data)["pred"]
                if spec.spatial_dims == 3:
                    SaveImage(output_dir=staging, output_ext=".nii.gz", separate_folder=False, output_postfix="",
                              resample=False, print_log=False)(probabilities, filename=str(staging / f"{case_id}_probabilities"))
                    publish(staging / f"{case_id}_probabilities.nii.gz", output_dir / f"{case_id}_probabilities.nii.gz")
                else:  # (classes, height, width) in the PNG's row/column order, float32
                    array = np.ascontiguousarray(np.swapaxes(np.asarray(probabilities), 1, 2), dtype=np.float32)
                    atomic_write(output_dir / f"{case_id}_probabilities.npz",
                                 lambda handle, a=array: np.savez_compressed(handle, probabilities=a))
            log.info("%s → %s", case_id, written[-1])
    log.info("segtrain-predict: %d case(s) written to %s", len(written), output_dir)
    if label:
        from segtrain.evaluation import evaluate_folders

        evaluate_folders(output_dir, label, output_dir / "evaluation", OmegaConf.to_container(cfg.evaluation, resolve=True),
                         class_names=list(spec.class_names), num_classes=spec.num_classes,
                         progress=bool(cfg.get("progress", True)), cases=[case for case, _ in cases],
                         label_mapping=run_cfg.data.get("label_mapping"))  # the labels as the run read them
    return written
