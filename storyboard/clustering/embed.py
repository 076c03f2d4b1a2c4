"""CLIP image embeddings: loading an open_clip model from local files, and a content-keyed cache.

Loading (``load_clip``), in the forms a user has on disk, never downloading:

* ``--clip-model ViT-B-32 --clip-checkpoint ViT-B-32-openai.pt``: an open_clip architecture name plus a
  checkpoint file. ``.safetensors`` is read with safetensors; ``.pt`` / ``.pth`` / ``.bin`` with
  ``torch.load(weights_only=True)`` (no pickled code runs). OpenAI's own release files are TorchScript
  archives, which ``weights_only`` cannot open: those are read with ``torch.jit.load`` (TorchScript,
  not pickle) and only their tensors are used. A file that holds no CLIP, or a CLIP of another
  architecture, is one clear error naming the file and the architecture (and what the file looks like).
* ``--clip-model local-dir:FOLDER``: open_clip's folder form (``open_clip_config.json`` + weights).
* ``--clip-model path/to/config.json --clip-checkpoint weights``: a model config registered with
  ``open_clip.add_model_config`` (its file stem becomes the name), then the checkpoint as above.

Embedding (``iter_embeddings``): the next batches are decoded and preprocessed while the model encodes
this one (torch ``DataLoader`` worker processes on a GPU; decoding threads (one per core) on a CPU, where worker
processes compete with torch's own threads: see bench/bench_embed.py); batched (the first batches
small, so the model starts at once), normalised, fp16 autocast on a GPU. When the
model's input is much smaller than the file, JPEGs are decoded at reduced size (libjpeg's DCT scaling,
``Image.draft``) and other formats box-averaged by an integer factor before the model's own resize:
several times cheaper, and the features change by less than one resize filter differs from another.

Cache (``EmbeddingCache``): one folder per model fingerprint (architecture + weights' content + the
preprocessing), holding ``part-*.npz`` files of (image content sha256 -> normalised feature). Every run
and every shard adds its own part file atomically, so processes never write the same file; a re-run
or a grown data set embeds only images whose content is new. ``merge_caches`` folds caches from
several machines (and the many small parts of one) into one part per model.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storyboard.core.cli import UserError, progress
from storyboard.core.records import RecordError, atomic_write_bytes, atomic_write_json

CACHE_FORMAT = 1
# Bump when the decode/preprocess path changes what a feature is, so old cache entries are not reused.
DECODE_VERSION = 2


# --------------------------------------------------------------------------------------------
# File hashing
# --------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: Sequence[Path], workers: int = 8, desc: str = "hashing") -> list[str | Exception]:
    """sha256 of each file (hashlib releases the GIL, so threads overlap the reads); an OSError in place
    of the hash for a file that cannot be read."""

    def one(path: Path) -> str | Exception:
        try:
            return sha256_file(path)
        except OSError as exc:
            return exc

    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(progress(pool.map(one, paths), desc=desc, total=len(paths), unit="file"))


class FileHashMemo:
    """Content hashes of big files (checkpoints), remembered by path, size and mtime in a JSON file."""

    def __init__(self, path: Path | None):
        self.path = path

    def get(self, file: Path) -> str:
        file = Path(file).resolve()
        stat = file.stat()
        key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
        memo: dict = {}
        if self.path and self.path.is_file():
            try:
                memo = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                memo = {}
        if key in memo:
            return memo[key]
        digest = sha256_file(file)
        if self.path:
            memo[key] = digest
            try:
                atomic_write_json(self.path, memo)
            except OSError:
                pass  # a read-only cache folder only costs a re-hash next time
        return digest


# --------------------------------------------------------------------------------------------
# Loading CLIP
# --------------------------------------------------------------------------------------------
@dataclass
class ClipModel:
    """An open_clip model ready to embed: model, eval preprocess, tokenizer, and what it is."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    name: str  # as the user named it
    fingerprint: str  # sha256 over architecture, weights and preprocessing
    device: Any
    info: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(max(size) if isinstance(size, (tuple, list)) else size)

    @property
    def embed_dim(self) -> int:
        return int(self.info.get("embed_dim") or 0)

    @property
    def uses_fp16(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cuda"


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's CLIP release files are TorchScript zips (they hold code/ and constants.pkl)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n or n.startswith("code/") for n in names)


def read_state_dict(path: Path) -> tuple[dict, str]:
    """The tensors of a checkpoint file and its format; ``UserError`` when it cannot be read safely."""
    import torch

    if not path.is_file():
        raise UserError(f"CLIP checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu")), "safetensors"
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"{path} is not a readable .safetensors file ({type(exc).__name__}: {exc})") from None
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), "torchscript"
        except Exception as exc:
            raise UserError(f"{path} looks like a TorchScript archive but cannot be loaded ({exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a checkpoint torch.load(weights_only=True) can read: {first[:300]}") from None
    if isinstance(value, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(value.get(key), dict):
                value = value[key]
                break
    if not isinstance(value, dict) or not all(hasattr(v, "shape") for v in value.values()):
        kind = type(value).__name__
        raise UserError(f"{path} holds a {kind}, not a state dict of tensors (expected a CLIP checkpoint)")
    return dict(value), "torch"


def _clean_state_dict(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's extra entries
        state.pop(key, None)
    return state


def looks_like_clip(state: dict) -> bool:
    keys = state.keys()
    has_visual = any(k.startswith("visual.") for k in keys)
    has_text = any(k.startswith(("token_embedding.", "text.", "transformer.")) for k in keys) or "text_projection" in keys
    return has_visual and has_text


def describe_clip_state(state: dict) -> str:
    """What a CLIP state dict looks like, e.g. 'ViT: width 768, 12 layers, patch 32, 224 px, embed 512'."""
    parts = []
    conv = state.get("visual.conv1.weight")
    if conv is not None:
        layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        patch = conv.shape[-1]
        pos = state.get("visual.positional_embedding")
        grid = round((pos.shape[0] - 1) ** 0.5) if pos is not None else 0
        parts.append(f"ViT: width {conv.shape[0]}, {layers} layers, patch {patch}, {grid * patch} px")
    proj = state.get("text_projection")
    if proj is not None and hasattr(proj, "shape") and len(proj.shape) == 2:
        parts.append(f"embed {proj.shape[1]}")
    return ", ".join(parts) or "not a ViT CLIP"


def guess_architectures(state: dict) -> list[str]:
    """open_clip architecture names whose config matches the checkpoint's ViT shape."""
    import open_clip

    conv = state.get("visual.conv1.weight")
    proj = state.get("text_projection")
    pos = state.get("visual.positional_embedding")
    if conv is None or proj is None or pos is None:
        return []
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    patch = conv.shape[-1]
    image = round((pos.shape[0] - 1) ** 0.5) * patch
    names = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision = cfg.get("vision_cfg", {})
        if "timm_model_name" in vision or "hf_model_name" in cfg.get("text_cfg", {}) \
                or "multimodal_cfg" in cfg or cfg.get("custom_text"):
            continue
        if (vision.get("width"), vision.get("layers"), vision.get("patch_size"), vision.get("image_size"), cfg.get("embed_dim")) \
                == (conv.shape[0], layers, patch, image, proj.shape[1]):
            names.append(name)
    return [n for n in names if "quickgelu" not in n.lower()][:3] or names[:3]


def _mismatch_summary(model, state: dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    bits = []
    if shapes:
        k = shapes[0]
        bits.append(f"{len(shapes)} tensors differ in shape (e.g. {k}: file {'x'.join(map(str, state[k].shape))}, "
                    f"architecture {'x'.join(map(str, own[k].shape))})")
    if missing:
        bits.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        bits.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(bits)


def _register_config(model_name: str) -> str:
    """A ``*.json`` model config path -> registered with open_clip; returns the name to create."""
    import open_clip

    path = Path(model_name)
    if not path.is_file():
        raise UserError(f"CLIP model config not found: {model_name}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"CLIP model config {model_name} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise UserError(f"{model_name} is not an open_clip model config (it needs vision_cfg and text_cfg)")
    open_clip.add_model_config(path)
    return path.stem


def _device(device: str | None):
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here (use --device cpu or auto)")
    return dev


def load_clip(model_name: str, checkpoint: str | os.PathLike | None = None, device: str | None = "auto",
              quick_gelu: str = "auto", hash_memo: Path | None = None) -> ClipModel:
    """Load an open_clip model from local files (see the module doc for the accepted forms)."""
    import open_clip
    import torch

    dev = _device(device)
    memo = FileHashMemo(hash_memo)
    if not model_name:
        raise UserError("no CLIP model named (--clip-model ViT-B-32, local-dir:FOLDER or a config .json)")

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):]).expanduser()
        config = folder / "open_clip_config.json"
        if not folder.is_dir():
            raise UserError(f"CLIP folder not found: {folder} (from --clip-model {model_name})")
        if not config.is_file():
            raise UserError(f"{folder} is not an open_clip folder: it has no open_clip_config.json")
        if checkpoint:
            raise UserError(f"--clip-checkpoint is not used with --clip-model {model_name} (the folder holds the weights)")
        from open_clip.factory import _find_checkpoint_in_dir

        weights = _find_checkpoint_in_dir(folder)
        if weights is None:
            raise UserError(f"{folder} holds no weights (open_clip_model.safetensors or similar)")
        state, fmt = read_state_dict(Path(weights))
        state = _clean_state_dict(state)
        if not looks_like_clip(state):
            raise UserError(f"{weights} is not a CLIP checkpoint ({len(state)} tensors, e.g. {next(iter(state), '-')}); "
                            f"{config} describes a CLIP model")
        try:
            with quiet_open_clip():
                model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device="cpu")
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{weights} does not match the CLIP architecture in {config}: {detail}") from None
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        arch = {"config": json.loads(config.read_text(encoding="utf-8"))}
        weight_hash = memo.get(Path(weights))
        described = str(folder)
    else:
        arch_name = _register_config(model_name) if model_name.endswith(".json") else model_name
        cfg = open_clip.get_model_config(arch_name)
        if cfg is None:
            raise UserError(f"unknown CLIP architecture {model_name!r}; use an open_clip name (ViT-B-32, ViT-B-16, "
                            f"ViT-L-14, ...: open_clip.list_models()), local-dir:FOLDER, or a model config .json")
        if not checkpoint:
            raise UserError(f"--clip-model {model_name} needs --clip-checkpoint (the weights file); none given")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"CLIP checkpoint not found: {path}")
        state, fmt = read_state_dict(path)
        state = _clean_state_dict(state)
        if not looks_like_clip(state):
            sample = ", ".join(list(state)[:3]) or "no tensors"
            raise UserError(f"{path} is not a CLIP checkpoint (its {len(state)} tensors look like {sample}); "
                            f"--clip-model {model_name} needs an open_clip / OpenAI CLIP state dict")
        qg = _want_quick_gelu(quick_gelu, arch_name, path, fmt)
        try:
            with quiet_open_clip():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch_name, pretrained=None, device="cpu", force_quick_gelu=qg, pretrained_text=False)
        except Exception as exc:
            raise UserError(f"cannot build CLIP architecture {model_name}: {exc}") from None
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        from open_clip.convert import convert_state_dict

        state = convert_state_dict(model, state)
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            from open_clip.model import convert_to_custom_text_state_dict

            state = convert_to_custom_text_state_dict(state)
        # Non-persistent buffers (the text tower's attention mask) are rebuilt by the model, not loaded.
        own = model.state_dict()
        for name, _ in model.named_buffers():
            if name in state and name not in own:
                state.pop(name)
        summary = _mismatch_summary(model, state)
        if summary:
            looks = describe_clip_state(state)
            guesses = guess_architectures(state)
            hint = f"; it matches {' / '.join(guesses)}" if guesses else ""
            raise UserError(f"{path} does not match CLIP architecture {model_name}: the file is a CLIP with "
                            f"{looks}{hint} ({summary})")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        tokenizer = open_clip.get_tokenizer(arch_name)
        arch = {"name": arch_name, "config": cfg, "quick_gelu": qg}
        weight_hash = memo.get(path)
        described = f"{model_name} + {path}"

    model = model.to(dev).eval()
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    fp_source = json.dumps({"arch": arch, "weights": weight_hash, "preprocess": preprocess_cfg,
                            "decode": DECODE_VERSION}, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(fp_source.encode()).hexdigest()
    with torch.no_grad():
        embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(model.encode_image(torch.zeros(1, 3, 224, 224, device=dev)).shape[1])
    info = {"model": model_name, "checkpoint": str(checkpoint) if checkpoint else None, "format": fmt,
            "described": described, "weights_sha256": weight_hash, "embed_dim": embed_dim,
            "preprocess": preprocess_cfg, "looks_like": describe_clip_state(state)}
    return ClipModel(model, preprocess, tokenizer, model_name, fingerprint, dev, info)


def _want_quick_gelu(choice: str, arch_name: str, path: Path, fmt: str) -> bool:
    """OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain 'ViT-B-32' config uses GELU.
    auto: QuickGELU for OpenAI's TorchScript release files and files named *openai*."""
    if choice in ("on", "yes", "true"):
        return True
    if choice in ("off", "no", "false"):
        return False
    if choice != "auto":
        raise UserError(f"--clip-quick-gelu must be auto, on or off (got {choice!r})")
    return "quickgelu" in arch_name.lower() or fmt == "torchscript" or "openai" in path.name.lower()


class quiet_open_clip:
    """open_clip logs a warning when it builds an architecture before we load its weights ourselves;
    that warning would only mislead, so warnings are held back while a model is built."""

    def __enter__(self):
        import logging

        logging.disable(logging.WARNING)
        return self

    def __exit__(self, *exc):
        import logging

        logging.disable(logging.NOTSET)
        return False


# --------------------------------------------------------------------------------------------
# Decoding and embedding
# --------------------------------------------------------------------------------------------
def open_for_embedding(path: str | os.PathLike, min_side: int | None = None):
    """An upright RGB PIL image whose short side is still >= ``min_side`` (None: full size): JPEGs
    decoded at a reduced DCT scale, other formats box-averaged by an integer factor after decoding.
    ``RecordError`` when the file cannot be decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from storyboard.core.imageio import DEFAULT_MAX_PIXELS, to_rgb_array

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > DEFAULT_MAX_PIXELS:
                    raise RecordError("unreadable_image", f"{path.name} is {w}x{h}, over the pixel limit")
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if min_side and img.format == "JPEG" and min(w, h) >= 2 * min_side:
                    scale = min_side / min(w, h)
                    img.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
                img.load()
                upright = ImageOps.exif_transpose(img)
                if upright.mode == "RGB" and not upright.info.get("icc_profile"):
                    out = upright  # already what the model takes: skip a copy through numpy
                else:
                    out = Image.fromarray(to_rgb_array(upright))
                factor = min(out.size) // min_side if min_side else 1
                # Box-average by an integer factor first (what the JPEG DCT scaling does for JPEGs): the
                # bicubic resize after it then works on a small image, several times cheaper.
                return out.reduce(factor) if factor >= 2 else out
    except FileNotFoundError:
        raise RecordError("missing_image", f"no file at {path}") from None
    except RecordError:
        raise
    except UnidentifiedImageError:
        raise RecordError("unreadable_image", f"{path.name} is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError,
            Image.DecompressionBombError) as exc:
        raise RecordError("unreadable_image", f"{path.name}: {type(exc).__name__}: {exc}") from None


class _ImageFiles:
    """A map-style dataset: index -> (index, preprocessed tensor or None, error detail)."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable, min_side: int | None):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = open_for_embedding(self.paths[i], self.min_side)
            return i, self.preprocess(image), None
        except RecordError as exc:
            return i, None, (exc.reason, exc.detail)
        except Exception as exc:  # a preprocess failure on a strange image is that image's problem
            return i, None, ("unreadable_image", f"{Path(self.paths[i]).name}: {type(exc).__name__}: {exc}")


def _collate(items):
    import torch

    ok = [(i, t) for i, t, e in items if t is not None]
    failed = [(i, e) for i, t, e in items if t is None]
    tensor = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensor, failed


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device) -> int:
    """Decoding worker processes: several on a GPU (the CPU is free to decode while the GPU encodes);
    on a CPU, none up to 8 cores (decoding threads instead: measured on 2 cores, a worker process
    competing with torch's threads costs more than it overlaps), then one per 8 cores."""
    cpus = _cpu_count()
    if getattr(device, "type", str(device)) == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 8 else min(4, cpus // 8)


def ramp_batches(n: int, batch_size: int, first: int = 4) -> list[list[int]]:
    """Batches of ``first``, twice that, ... up to ``batch_size`` images, then ``batch_size`` each: the
    model starts on the first few decoded images instead of idling until a whole batch is decoded."""
    batches, start, size = [], 0, max(1, min(first, batch_size))
    while start < n:
        batches.append(list(range(start, min(n, start + size))))
        start += size
        size = min(batch_size, size * 2)
    return batches


@dataclass
class EmbedBatch:
    indices: list[int]
    features: np.ndarray  # (len(indices), dim) float32, L2-normalised
    failed: list[tuple[int, tuple[str, str]]]  # (index, (reason, detail))


def _thread_loader(dataset: _ImageFiles, batches: list[list[int]], ahead: int = 2, threads: int = 2):
    """The DataLoader's job in background threads of this process: decoding (which releases the GIL)
    overlaps encoding without another process competing with torch's threads for the cores. Images
    are decoded one per task on ``threads`` threads, so while the encoder waits for a batch every
    core decodes (one thread left a core idle then: PNG 65 % -> 66-71 % of the bare loop on 2 cores)."""
    from collections import deque

    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    pending: deque = deque()

    def collated(futures):
        return _collate([f.result() for f in futures])

    try:
        for batch in batches:
            pending.append([pool.submit(dataset.__getitem__, i) for i in batch])
            if len(pending) > ahead:
                yield collated(pending.popleft())
        while pending:
            yield collated(pending.popleft())
    finally:
        for futures in pending:
            for future in futures:
                future.cancel()
        pool.shutdown(wait=True)


def iter_embeddings(clip: ClipModel, paths: Sequence[Path], batch_size: int = 64, workers: int | None = None,
                    fast_decode: bool = True, desc: str = "embedding") -> Iterator[EmbedBatch]:
    """Embed ``paths`` in batches, decoding the next batches while the model encodes this one; yields
    as it goes. ``workers`` > 0: that many DataLoader worker processes decode (a GPU, or many cores);
    0: decoding threads in this process, one per core (a few CPU cores, where worker processes would compete
    with the encoder's threads); None: chosen by device (``default_workers``)."""
    import torch
    from torch.utils.data import DataLoader

    if not paths:
        return
    workers = default_workers(clip.device) if workers is None else workers
    dataset = _ImageFiles(paths, clip.preprocess, clip.image_size if fast_decode else None)
    cuda = clip.device.type == "cuda"
    batches = ramp_batches(len(paths), batch_size)
    if workers > 0:
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                            pin_memory=cuda, worker_init_fn=_worker_init, prefetch_factor=4, persistent_workers=False)
    else:
        loader = _thread_loader(dataset, batches, threads=_cpu_count())
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else _null()
    bar = progress(range(len(paths)), desc=desc, total=len(paths), unit="img")
    bar_iter = getattr(bar, "update", None)
    with torch.inference_mode(), autocast:
        for indices, tensor, failed in loader:
            if tensor is not None:
                feats = clip.model.encode_image(tensor.to(clip.device, non_blocking=True))
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            else:
                feats = np.zeros((0, clip.embed_dim), np.float32)
            if bar_iter:
                bar_iter(len(indices) + len(failed))
            yield EmbedBatch(indices, feats, failed)
    if hasattr(bar, "close"):
        bar.close()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def encode_texts(clip: ClipModel, texts: Sequence[str]) -> np.ndarray:
    """Normalised text features (n, dim) float32."""
    import torch

    with torch.inference_mode():
        tokens = clip.tokenizer(list(texts)).to(clip.device)
        feats = clip.model.encode_text(tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
_PART = re.compile(r"^part-[\w.-]+\.npz$")


class EmbeddingCache:
    """image sha256 -> feature, for one model, in ``<root>/<fingerprint[:16]>/part-*.npz``."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, model_info: dict | None = None):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.folder = self.root / fingerprint[:16]
        self.model_info = dict(model_info or {})
        self._data: dict[str, np.ndarray] | None = None

    def parts(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _PART.match(p.name))

    def load(self) -> dict[str, np.ndarray]:
        if self._data is None:
            data: dict[str, np.ndarray] = {}
            for part in self.parts():
                keys, feats = read_part(part)
                for k, v in zip(keys, feats):
                    data[k] = v
            self._data = data
        return self._data

    def __contains__(self, key: str) -> bool:
        return key in self.load()

    def get(self, key: str) -> np.ndarray | None:
        return self.load().get(key)

    def add(self, keys: Sequence[str], features: np.ndarray, tag: str = "") -> Path | None:
        """Write one new part (atomically); nothing when ``keys`` is empty."""
        if not len(keys):
            return None
        self._write_meta()
        name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{tag + '-' if tag else ''}{uuid.uuid4().hex[:8]}.npz"
        path = self.folder / name
        write_part(path, list(keys), np.asarray(features, np.float32))
        data = self.load()
        for k, v in zip(keys, features):
            data[k] = np.asarray(v, np.float32)
        return path

    def compact(self) -> int:
        """Fold every part into one; returns how many parts were folded."""
        parts = self.parts()
        if len(parts) <= 1:
            return 0
        data = {}
        for part in parts:
            keys, feats = read_part(part)
            data.update(zip(keys, feats))
        keys = sorted(data)
        write_part(self.folder / f"part-{time.strftime('%Y%m%d%H%M%S')}-merged-{uuid.uuid4().hex[:8]}.npz",
                   keys, np.stack([data[k] for k in keys]))
        for part in parts:
            part.unlink(missing_ok=True)
        self._data = None
        return len(parts)

    def _write_meta(self) -> None:
        meta = self.folder / "model.json"
        if not meta.is_file():
            atomic_write_json(meta, {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, **self.model_info})


def write_part(path: Path, keys: list[str], features: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.asarray(keys, dtype="U64"), features=np.asarray(features, np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def read_part(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [str(k) for k in npz["keys"]]
            feats = np.asarray(npz["features"], np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"embedding cache part {path} is unreadable ({exc}); delete it and re-run") from None
    if len(keys) != len(feats):
        raise UserError(f"embedding cache part {path} is inconsistent ({len(keys)} keys, {len(feats)} rows)")
    return keys, feats


@dataclass
class MergeSummary:
    destination: Path
    models: list[tuple[str, int, int, int]]  # (fingerprint[:16], parts read, entries before, entries after)

    def table(self) -> str:
        from storyboard.core.cli import format_table

        rows = [(fp, parts, before, after) for fp, parts, before, after in self.models]
        return f"merged caches into {self.destination}\n" + format_table(
            rows, header=("model", "parts folded", "entries before", "entries after"))


def merge_caches(sources: Sequence[str | os.PathLike], destination: str | os.PathLike) -> MergeSummary:
    """Copy every model's entries from ``sources`` into ``destination`` and fold each model's parts into
    one. Sources are left as they were. With no sources, only folds the destination's parts."""
    dest = Path(destination)
    folders: dict[str, list[Path]] = {}
    for source in [dest, *map(Path, sources)]:
        if not source.exists():
            if source == dest:
                continue
            raise UserError(f"cache folder not found: {source}")
        if not source.is_dir():
            raise UserError(f"{source} is not a cache folder")
        found = [p for p in source.iterdir() if p.is_dir() and (p / "model.json").is_file()]
        if source != dest and not found:
            raise UserError(f"{source} holds no embedding cache (no */model.json inside)")
        for model_dir in found:
            folders.setdefault(model_dir.name, []).append(model_dir)
    results = []
    for short, dirs in sorted(folders.items()):
        meta = json.loads((dirs[0] / "model.json").read_text(encoding="utf-8"))
        cache = EmbeddingCache(dest, meta.get("fingerprint", short), {k: v for k, v in meta.items() if k not in ("format", "fingerprint")})
        before = len(cache.load()) if cache.folder.is_dir() else 0
        dest_parts = cache.parts()
        data = dict(cache.load())
        parts_read = len(dest_parts)
        for folder in dirs:
            if folder.resolve() == cache.folder.resolve():
                continue
            for part in sorted(p for p in folder.iterdir() if _PART.match(p.name)):
                keys, feats = read_part(part)
                data.update(zip(keys, feats))
                parts_read += 1
        if not data:
            continue
        keys = sorted(data)
        cache._write_meta()
        write_part(cache.folder / f"part-{time.strftime('%Y%m%d%H%M%S')}-merged-{uuid.uuid4().hex[:8]}.npz",
                   keys, np.stack([data[k] for k in keys]))
        for part in dest_parts:  # only after the merged part is safely in place
            part.unlink(missing_ok=True)
        results.append((short, parts_read, before, len(keys)))
    if not results:
        raise UserError(f"nothing to merge: no embedding cache in {', '.join(map(str, sources)) or dest}")
    return MergeSummary(dest, results)


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------
def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), shards numbered 0..n-1; None -> (0, 1)."""
    if text in (None, ""):
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UserError(f"--shard must look like i/n, e.g. 0/4 (got {text!r})")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UserError(f"--shard {text}: shards are numbered 0..n-1, so i must be below n")
    return index, count


@dataclass
class Processes:
    """This process's place among ``accelerate launch`` processes (1 and 0 when not launched so)."""

    index: int = 0
    count: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        if self.state is not None and self.count > 1:
            self.state.wait_for_everyone()


def current_processes(device: str | None = "auto") -> Processes:
    """Under ``accelerate launch`` (WORLD_SIZE > 1) each process takes its own shard; PartialState
    tells which. A plain ``python`` run is one process and never touches torch.distributed.

    Several CPU processes come from ``accelerate launch --multi_gpu --num_processes N`` with ``--device
    cpu`` or on a machine without a GPU (``--cpu`` alone starts one process unless MPI is installed):
    they join one gloo group, which ``PartialState(cpu=True)`` sets up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or (device in ("auto", None, "") and not torch.cuda.is_available()) \
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=cpu)
    return Processes(state.process_index, state.num_processes, state)


def shard_indices(n: int, shard: tuple[int, int], processes: Processes) -> list[int]:
    """Positions (of ``n`` inputs) this process embeds: shard i/n split again among the processes."""
    index, count = shard
    total = count * processes.count
    mine = index * processes.count + processes.index
    return list(range(mine, n, total))



# --------------------------------------------------------------------------------------------
# Flags shared by the scripts that load CLIP (clustering, validation)
# --------------------------------------------------------------------------------------------
def add_clip_arguments(parser, model_default: str = "ViT-B-32", checkpoint_default: str | None = None) -> None:
    group = parser.add_argument_group("CLIP model (local files only)")
    group.add_argument("--clip-model", default=model_default,
                       help="open_clip architecture (ViT-B-32, ...), local-dir:FOLDER (open_clip folder with its "
                            "weights), or a model config .json (default: %(default)s)")
    group.add_argument("--clip-checkpoint", type=Path, default=Path(checkpoint_default) if checkpoint_default else None,
                       help="weights for --clip-model: an open_clip/OpenAI .pt (read with weights_only=True; OpenAI's "
                            "TorchScript files with torch.jit.load) or .safetensors (default: %(default)s)")
    group.add_argument("--clip-quick-gelu", choices=("auto", "on", "off"), default="auto",
                       help="QuickGELU activations, as OpenAI's weights need; auto: on for OpenAI's TorchScript files "
                            "and files named *openai* (default: %(default)s)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto = GPU when present)")
