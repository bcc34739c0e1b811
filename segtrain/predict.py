"""Sliding-window inference with a trained run's checkpoint; predictions keep the input geometry.

The checkpoint carries the composed config and the data spec (``checkpoint["segtrain"]``), so the
network and the preprocessing are rebuilt exactly as trained. Each prediction is inverted through
the preprocessing (orientation, resampling) with MONAI's ``Invertd`` and written with the
image's own affine: it overlays the input in any viewer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from segtrain.errors import DataError

log = logging.getLogger("segtrain")

from segtrain.data.readers import IMAGE_2D_SUFFIXES as IMAGE_SUFFIXES  # noqa: E402  (one registry of formats)
from segtrain.data.readers import VOLUME_SUFFIXES  # noqa: E402


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES + IMAGE_SUFFIXES if name.endswith(s)), "")


def list_inputs(source, in_channels: int) -> list[tuple[str, list[str]]]:
    """(case id, channel files) for a file, a folder, a dataset root (imagesTs/, imagesTr/, images/), or a list of these.

    Raises:
        DataError: a missing input, a folder without images, a case without all its channels, or two
            inputs with the same case id (their predictions would overwrite each other).
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
        if in_channels != 1:
            raise DataError(f"input={path}: the model takes {in_channels} channels; pass the folder with CASE_0000..CASE_{in_channels - 1:04d} files")
        return [(path.name[: -len(_suffix(path))] or path.stem, [str(path)])]
    if not path.is_dir():
        raise DataError(f"input={path}: no such file or folder; pass an image file, a folder of images or a dataset root")
    for sub in ("imagesTs", "imagesTr", "images"):
        if (path / sub).is_dir():
            path = path / sub
            break
    files = sorted(p for p in path.iterdir() if p.is_file() and _suffix(p))
    if not files:
        raise DataError(f"input={path}: no image files (.nii.gz, .nii, .nrrd, .png, .tif, .jpg) found")
    channel = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
    cases: dict[str, dict[int, str]] = {}
    for file in files:
        stem = file.name[: -len(_suffix(file))]
        match = channel.match(stem)
        if match and (in_channels > 1 or int(match["channel"]) == 0):
            cases.setdefault(match["case"], {})[int(match["channel"])] = str(file)
        else:
            cases.setdefault(stem, {})[0] = str(file)
    out = []
    for case, channels in sorted(cases.items()):
        missing = [c for c in range(in_channels) if c not in channels]
        if missing:
            raise DataError(f"input={path}: case {case} lacks channel file(s) {', '.join(f'{case}_{c:04d}' for c in missing)}")
        out.append((case, [channels[c] for c in range(in_channels)]))
    return out


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


def predict(cfg: DictConfig) -> list[Path]:
    """Segment every input case; returns the written label files."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import SaveImage

    from segtrain.data.transforms import inference_transforms, prediction_inverter
    from segtrain.metrics import class_argmax
    from segtrain.module import main_output

    run_cfg, spec, net = load_checkpoint(cfg.ckpt_path)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
    net.to(device)
    settings = {**OmegaConf.to_container(run_cfg.get("inference", {}), resolve=True)}
    settings.update({k: v for k, v in OmegaConf.to_container(cfg.inference, resolve=True).items() if v is not None})
    roi = settings.get("roi_size") or list(spec.patch_size)
    amp = {"bf16": torch.bfloat16, "16": torch.float16}.get(str(cfg.precision))
    pipeline = inference_transforms(run_cfg.data, spec)
    invert = prediction_inverter(pipeline)
    cases = list_inputs(cfg.input, spec.in_channels)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ext = ".png" if spec.spatial_dims == 2 else ".nii.gz"
    writer = SaveImage(output_dir=output_dir, output_ext=ext, output_postfix="", separate_folder=False,
                       output_dtype="uint8", resample=False, print_log=False, scale=None)
    written = []
    for case_id, files in cases:
        try:
            data = pipeline({"image": files if len(files) > 1 else files[0]})
        except Exception as err:  # noqa: BLE001 - unreadable input is the user's file problem
            raise DataError(f"{files[0]}: cannot be read or preprocessed ({str(err).splitlines()[0][:200]})") from None
        image = data["image"].unsqueeze(0).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = sliding_window_inference(
                image, roi_size=list(roi), sw_batch_size=int(settings.get("sw_batch_size") or 4),
                predictor=lambda x: main_output(net(x)), overlap=float(settings.get("overlap", 0.5)),
                mode=settings.get("mode", "gaussian"),
            )
        probabilities = torch.softmax(logits.float(), dim=1)[0].cpu()
        data["pred"] = class_argmax(logits)[0].cpu().to(torch.uint8)
        data["pred"] = _with_meta(data["pred"], data["image"])
        restored = invert(data)["pred"]
        target = output_dir / case_id
        writer(restored, filename=str(target))
        written.append(target.with_name(target.name + ext))
        if cfg.get("save_probabilities") and spec.spatial_dims == 3:
            data["pred"] = _with_meta(probabilities, data["image"])
            probability_writer = SaveImage(output_dir=output_dir, output_ext=".nii.gz", separate_folder=False,
                                           output_postfix="", resample=False, print_log=False)
            probability_writer(prediction_inverter(pipeline, nearest=False)(data)["pred"],
                               filename=str(output_dir / f"{case_id}_probabilities"))
        log.info("%s → %s", case_id, written[-1])
    log.info("segtrain-predict: %d case(s) written to %s", len(written), output_dir)
    return written


def _with_meta(array: torch.Tensor, like):
    from monai.data import MetaTensor

    return MetaTensor(array, meta=dict(like.meta), applied_operations=list(like.applied_operations))
