"""The line-art backends that load weights: controlnet_aux's annotators (``lineart``, ``lineart_anime``)
and the seed's SDXL ControlNet pipeline (``sdxl-controlnet``), loaded once and applied batch by batch.

A heavy module (torch at the top): the line-art stage imports it only once the records are planned
and a model backend is asked for; the settings, checks and OpenCV backends are in
``storyboard.images.lineart``.
"""
from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from storyboard.artifacts.base_load import load_base_pipeline
from storyboard.artifacts.base_model import resolve_base
from storyboard.core.cli import UserError
from storyboard.core.runtime import resolve_device, resolve_dtype
from storyboard.images.lineart import LineartSettings, canny, xdog


def _torch_loads_safely() -> bool:
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 6)  # torch.load defaults to weights_only=True from 2.6


def load_detector(kind: str, folder: str | Path):
    """controlnet_aux's ``LineartDetector`` / ``LineartAnimeDetector`` from a local folder only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"annotator folder not found: {folder}")
    names = {"lineart": ("sk_model.pth", "sk_model2.pth"), "lineart_anime": ("netG.pth",)}[kind]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)} (the {kind} annotator's weights)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # controlnet_aux imports every annotator (mediapipe, timm notices)
        from controlnet_aux.lineart import Generator, LineartDetector  # noqa: PLC0415 (optional: only the lineart annotators need controlnet_aux, and its import prints notices)
        from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator  # noqa: PLC0415 (optional, as above)
    if _torch_loads_safely():
        cls = LineartDetector if kind == "lineart" else LineartAnimeDetector
        return cls.from_pretrained(str(folder))  # a directory: read locally, never downloaded

    def state(name: str) -> dict:
        value = torch.load(folder / name, map_location="cpu", weights_only=True)
        return {k.replace("module.", ""): v for k, v in value.items()}

    if kind == "lineart":
        fine, coarse = Generator(3, 1, 3), Generator(3, 1, 3)
        fine.load_state_dict(state(names[0]))
        coarse.load_state_dict(state(names[1]))
        return LineartDetector(fine.eval(), coarse.eval())
    net = UnetGenerator(3, 1, 8, 64, norm_layer=functools.partial(torch.nn.InstanceNorm2d, affine=False,
                                                                    track_running_stats=False))
    net.load_state_dict(state(names[0]))
    return LineartAnimeDetector(net.eval())


class ModelBackend:
    """The annotator (and the SDXL ControlNet pipeline), loaded once, applied batch by batch."""

    def __init__(self, s: LineartSettings):
        self.s = s
        self.device = resolve_device(s.device)
        self.dtype = resolve_dtype(s.dtype, self.device)
        detector_kind = s.backend if s.backend != "sdxl-controlnet" else s.detector
        self.detector = None
        if detector_kind in ("lineart", "lineart_anime"):
            self.detector = load_detector(detector_kind, s.annotators).to(self.device)
        self.detector_kind = detector_kind
        self.pipe = None
        if s.backend == "sdxl-controlnet":
            from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline  # noqa: PLC0415 (optional: only --backend sdxl-controlnet loads diffusers)

            controlnet = ControlNetModel.from_pretrained(s.controlnet, dtype=self.dtype, local_files_only=True)
            base = resolve_base(s.base_model, config=s.base_config, families=("sdxl",), flag="--base-model")
            self.pipe = load_base_pipeline(base, StableDiffusionXLControlNetPipeline, dtype=self.dtype,
                                           controlnet=controlnet)
            self.pipe.to(self.device)
            self.pipe.set_progress_bar_config(disable=True)
        # No global torch.set_grad_enabled(False): this may run inside a bigger process (tests, a
        # notebook); the pipeline and the annotators already run under torch.no_grad().

    def control(self, rgb: np.ndarray, size: int) -> np.ndarray:
        """White lines on black at ``size`` x ``size`` (ControlNet-lineart's convention)."""
        kind = self.detector_kind
        if kind == "xdog":
            lines = 255 - xdog(rgb)
        elif kind == "canny":
            lines = 255 - canny(rgb, self.s.canny_low, self.s.canny_high)
        else:
            kwargs = {"coarse": self.s.coarse} if kind == "lineart" else {}
            # Never detect finer than the output: a 64 px control image needs no 512 px pass.
            detect = max(64, min(self.s.detect_resolution, size))
            out = self.detector(rgb, detect_resolution=detect, image_resolution=size, output_type="np", **kwargs)
            lines = np.asarray(out)[..., 0] if np.asarray(out).ndim == 3 else np.asarray(out)
        if lines.shape != (size, size):
            lines = cv2.resize(lines, (size, size), interpolation=cv2.INTER_AREA)
        return lines

    def run(self, images: Sequence[np.ndarray], size: int, seeds: Sequence[int]) -> list[np.ndarray]:
        controls = [self.control(rgb, size) for rgb in images]
        if self.pipe is None:
            return [255 - c for c in controls]  # an annotator's own lines, black on white
        n = len(images)
        result = self.pipe(
            prompt=[self.s.prompt] * n, negative_prompt=[self.s.negative_prompt] * n,
            image=[Image.fromarray(c).convert("RGB") for c in controls], height=size, width=size,
            num_inference_steps=self.s.steps, guidance_scale=self.s.guidance_scale,
            controlnet_conditioning_scale=self.s.controlnet_scale,
            # CPU generators: the same seed gives the same picture on any device and batch size.
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        )
        return [np.asarray(img.convert("RGB")) for img in result.images]
