"""Line-art versions of the finalized images, by one of five backends.

``xdog``, ``canny``        OpenCV only, no weights: an extended difference of Gaussians (clean, even
                           lines) or Canny edges, black lines on white.
``lineart``,               controlnet_aux's annotators (``LineartDetector`` / ``LineartAnimeDetector``)
``lineart_anime``          loaded from a local folder with ``sk_model.pth`` + ``sk_model2.pth`` /
                           ``netG.pth``; their white-on-black output is inverted to black on white.
``sdxl-controlnet``        the seed's method: the detector's control image (``detector``: lineart by
                           default) drives diffusers' ``StableDiffusionXLControlNetPipeline`` (a local
                           SDXL base, a diffusers folder or one ``.safetensors`` / ``.ckpt`` file as the
                           WebUI keeps it, + a local ControlNet-lineart folder) with a clean-line-art
                           prompt; fp16 on a GPU, batched, one seed per record (from the base seed and
                           the record's id, so it does not depend on order or batch) kept in the record.

``run_lineart`` reads ``Dataset_fin/metadata.jsonl`` (``file_name`` relative to the data folder),
writes ``<data>/lineart/<name>.png`` and the records with ``lineart_file`` (relative to the data
folder), ``lineart_backend`` and, for ``sdxl-controlnet``, ``lineart_seed``. By default the metadata
is rewritten in place (atomically), so later stages see the field. Rejects and the run record go to
``<data>/lineart/rejects.jsonl`` and ``<data>/lineart/run.json``.

Resume: ``<data>/lineart/.state/<name>.json`` holds the input image's SHA-256 and the settings key
(which includes a fingerprint of the model folders); a matching entry is skipped.

Models are only ever read from disk: a path that is not a folder (or, for the SDXL base, a checkpoint
file, loaded offline through ``storyboard.artifacts.base_load``) is a user error, never a Hub lookup
(controlnet_aux's ``from_pretrained`` downloads for anything that is not a directory).
controlnet_aux 0.0.10 calls ``torch.load`` without ``weights_only``; that is safe from torch 2.6,
where ``weights_only=True`` is the default, and on older torch the annotators are built from
controlnet_aux's classes here and loaded with ``weights_only=True`` (see
``lineart_models.load_detector``).

This module is what the stage needs without torch (settings, checks, the OpenCV backends, seeds);
the model backends, which load torch, are in ``storyboard.images.lineart_models``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from storyboard.artifacts.base_model import resolve_base, sample_digest
from storyboard.core.cli import UserError
from storyboard.core.imageio import load_rgb

BACKENDS = ("xdog", "canny", "lineart", "lineart_anime", "sdxl-controlnet")
DETECTORS = ("lineart", "lineart_anime", "xdog", "canny")
MODEL_BACKENDS = ("lineart", "lineart_anime", "sdxl-controlnet")
STAGE_VERSION = 1
OUT_DIR = "lineart"
DEFAULT_PROMPT = ("clean black and white line art, storyboard sketch, crisp thin ink outlines, "
                  "white background, no shading")
DEFAULT_NEGATIVE = "color, shading, gray tones, noise, blurry, text, watermark, speech bubble"
_KEYED_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}  # --dtype as resume keys spell it


@dataclass(frozen=True)
class LineartSettings:
    backend: str = "sdxl-controlnet"
    size: int | None = None  # output side; None = the input image's size
    xdog_sigma: float | None = None  # None = 1.0 at 1024 px, scaled with the size
    xdog_tau: float = 0.98
    xdog_phi: float = 200.0
    canny_low: int = 60
    canny_high: int = 150
    detector: str = "lineart"  # the control image for sdxl-controlnet
    detect_resolution: int = 512
    coarse: bool = False  # lineart: its coarse model (sk_model2.pth)
    annotators: str | None = None
    base_model: str | None = None  # an SDXL diffusers folder or one checkpoint file
    base_config: str | None = None  # a single-file base of a non-standard size: its diffusers configs
    controlnet: str | None = None
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE
    steps: int = 30
    guidance_scale: float = 7.0
    controlnet_scale: float = 1.0
    seed: int = 0
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    fingerprints: dict = field(default_factory=dict)  # model folder -> content fingerprint (set by check)

    def uses(self, what: str) -> bool:
        """Does this run need the annotators / the SDXL folders?"""
        if what == "annotators":
            return self.backend in ("lineart", "lineart_anime") or (
                self.backend == "sdxl-controlnet" and self.detector in ("lineart", "lineart_anime"))
        return self.backend == "sdxl-controlnet"

    def key(self) -> str:
        """What decides the output bytes (not the device, batch size or where the folders are)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("device", "batch_size", "annotators",
                                                                      "base_model", "base_config", "controlnet")}
        # --dtype once took torch's spellings here: keys of earlier runs keep resuming.
        data["dtype"] = _KEYED_DTYPE.get(data["dtype"], data["dtype"])
        if self.backend not in MODEL_BACKENDS:
            data = {k: v for k, v in data.items() if k.startswith(("backend", "size", self.backend))}
        data["stage_version"] = STAGE_VERSION
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    """Names, sizes and JSON contents of a model folder: changes when the model does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(folder).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def check_settings(s: LineartSettings) -> LineartSettings:
    """Refuse impossible settings with one clear line; fill in the model fingerprints."""
    if s.backend not in BACKENDS:
        raise UserError(f"--backend {s.backend!r}: choose from {', '.join(BACKENDS)}")
    if s.detector not in DETECTORS:
        raise UserError(f"--detector {s.detector!r}: choose from {', '.join(DETECTORS)}")
    if s.size is not None and not 16 <= s.size <= 8192:
        raise UserError(f"--size {s.size} is out of range (16..8192)")
    if s.detect_resolution < 64:
        raise UserError(f"--detect-resolution {s.detect_resolution}: at least 64")
    if s.steps < 1 or s.batch_size < 1:
        raise UserError("--steps and --batch-size must be at least 1")
    fingerprints = {}
    needed = []
    if s.uses("annotators"):
        needed.append(("annotators", s.annotators, "--annotators", "controlnet_aux annotator folder "
                       "(sk_model.pth, sk_model2.pth, netG.pth)"))
    if s.uses("sdxl"):
        needed += [("base_model", s.base_model, "--base-model", "SDXL base (a diffusers folder or one checkpoint "
                    "file)"), ("controlnet", s.controlnet, "--controlnet", "SDXL ControlNet (lineart) folder")]
    hint = "; --backend xdog or canny need no weights" if s.backend in MODEL_BACKENDS else ""
    for name, path, flag, what in needed:
        a_base_file = name == "base_model" and bool(path) and Path(path).is_file()
        if not a_base_file and (not path or not Path(path).is_dir()):
            raise UserError(f"{flag} {path}: not a folder; the {s.backend} backend needs a local {what}{hint}")
        fingerprints[name] = base_model_fingerprint(s) if name == "base_model" else folder_fingerprint(Path(path))
    return LineartSettings(**{**asdict(s), "fingerprints": fingerprints})


def base_model_fingerprint(s: LineartSettings) -> str:
    """The SDXL base checked (a folder, or one checkpoint file whose family is detected from its keys)
    and fingerprinted for the resume key: a folder's names, sizes and JSON; a file's size, first and
    last MiB (hashing gigabytes on every run would cost more than the check saves)."""
    base = resolve_base(s.base_model, config=s.base_config, families=("sdxl",), flag="--base-model")
    if not base.is_file:
        return folder_fingerprint(base.path)
    return f"{sample_digest(base.path)[:16]}:{base.config_name}:{base.prediction_type}"


# --------------------------------------------------------------------------------------------
# Weight-free backends (black lines on white, uint8 grey)
# --------------------------------------------------------------------------------------------
def xdog(rgb: np.ndarray, sigma: float | None = None, tau: float = 0.98, phi: float = 200.0) -> np.ndarray:
    """Extended difference of Gaussians (Winnemoeller et al. 2012), the edge-only form: where the
    narrow blur falls below ``tau`` x the wide one, a soft-thresholded dark line."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    if sigma is None:
        sigma = max(0.5, max(grey.shape) / 1024.0)
    narrow = cv2.GaussianBlur(grey, (0, 0), sigma)
    wide = cv2.GaussianBlur(grey, (0, 0), sigma * 1.6)
    d = narrow - tau * wide
    lines = np.where(d >= 0, 1.0, 1.0 + np.tanh(phi * d))
    return np.clip(lines * 255.0, 0, 255).astype(np.uint8)


def canny(rgb: np.ndarray, low: int = 60, high: int = 150) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = max(grey.shape) / 1024.0
    grey = cv2.GaussianBlur(grey, (0, 0), max(0.8, 1.2 * scale))
    edges = cv2.Canny(grey, low, high, L2gradient=True)
    if scale >= 1.5:  # keep lines about as thick, relative to the picture, at large sizes
        edges = cv2.dilate(edges, np.ones((2, 2), np.uint8))
    return 255 - edges


def record_seed(base_seed: int, record_id: str) -> int:
    """A record's own seed: stable across runs, orders, batches and shards."""
    digest = hashlib.sha256(f"{base_seed}\0{record_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def cpu_lines(args: tuple[str, str, int | None, dict]) -> np.ndarray:
    """One image's line art by a weight-free backend: (path, backend, size, its parameters) -> lines."""
    path, backend, size, params = args
    rgb = load_rgb(path).rgb
    if size and rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    if backend == "xdog":
        return xdog(rgb, params["xdog_sigma"], params["xdog_tau"], params["xdog_phi"])
    return canny(rgb, params["canny_low"], params["canny_high"])
