"""Loading a base model plus a training output folder, putting trigger tokens into prompts, and writing
images that carry the settings that made them.

One loader for everyone: ``inference_trigger.py``, the sharded validation (``storyboard.inference.validate``) and
the bench call ``load_trigger_pipeline(base, checkpoint)``. It runs every check first (below), then the
trainer's own loader, ``storyboard.train.preview.load_trained_pipeline`` (the plain diffusers calls a
user makes: ``from_pretrained``, ``load_lora_weights``, ``load_textual_inversion`` per token, or the
tuned ``text_encoder/`` + ``tokenizer/``), then fuses the LoRA into the weights::

    pipe.fuse_lora(lora_scale=s); pipe.unload_lora_weights()      # fused: no LoRA cost per step

What a checkpoint folder holds (written by the trainer, ``train_trigger02.py``):
``pytorch_lora_weights.safetensors`` (diffusers-format UNet + text-encoder LoRA),
``embeddings/<stem>.safetensors`` (one per trigger token), ``lora_webui.safetensors`` (kohya keys, not
read here), optionally ``text_encoder/`` (a fully tuned text encoder) and ``trigger_manifest.json``
(tokens, initializers, the base model's fingerprint, hyperparameters). Every mismatch between a
checkpoint and the base it is loaded on (tokenizer size, embedding width, base fingerprint, LoRA
shapes) is a ``UserError``: one line, before any image is made.

Trigger rules (``prepare_prompt``): ``--shot full`` / ``--shot 풀샷`` puts that shot's token and its
words in front of a plain prompt; a prompt that already holds a trigger is left alone; a trigger the
checkpoint did not train is an error listing those it did. On the bare base (``checkpoint=None``)
each trigger is replaced by its plain words instead (``plain_prompt``), which is what
``validation/base_valid.sh`` compares against.

Every PNG carries a ``parameters`` text chunk in the AUTOMATIC1111 WebUI form (readable by the WebUI's
PNG Info tab, ComfyUI loaders, exiftool, ...) and a ``storyboard`` chunk with the same fields as JSON;
the sidecar JSONL beside the images holds the same JSON, one line per image.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storyboard.core.cli import UserError
from storyboard.core.records import atomic_write_bytes
from storyboard.core.vocabulary import Term, Vocabulary, load_vocabulary

LORA_FILE = "pytorch_lora_weights.safetensors"
WEBUI_LORA_FILE = "lora_webui.safetensors"
EMBEDDINGS_DIR = "embeddings"
TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
MANIFEST_FILE = "trigger_manifest.json"
PNG_PARAMETERS_KEY = "parameters"  # the key the A1111 WebUI reads
PNG_RECORD_KEY = "storyboard"  # our JSON copy of the same fields

# --scheduler name -> (diffusers class, extra config, the A1111 sampler label written into PNGs).
SCHEDULERS: dict[str, tuple[str, dict, str]] = {
    "default": ("", {}, ""),  # whatever the base model's scheduler_config.json says
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "dpm2": ("KDPM2DiscreteScheduler", {}, "DPM2"),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}, "DPM2 a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M"),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
                        "DPM++ 2M Karras"),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, "DPM++ 2M SDE Karras"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "deis": ("DEISMultistepScheduler", {}, "DEIS"),
    "lcm": ("LCMScheduler", {}, "LCM"),
}
# The base's own scheduler class -> A1111 label, for --scheduler default.
_CLASS_LABELS = {"PNDMScheduler": "PLMS", "DDIMScheduler": "DDIM", "EulerDiscreteScheduler": "Euler",
                 "EulerAncestralDiscreteScheduler": "Euler a", "DPMSolverMultistepScheduler": "DPM++ 2M",
                 "UniPCMultistepScheduler": "UniPC", "LMSDiscreteScheduler": "LMS", "HeunDiscreteScheduler": "Heun"}
DTYPES = ("auto", "fp32", "fp16", "bf16")
_TOKEN_RE = re.compile(r"<[^<>\s]+>")


# --------------------------------------------------------------------------------------------
# Settings and flags
# --------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """How images are made; everything here is written into each PNG."""

    steps: int = 30
    guidance: float = 7.5
    width: int | None = None  # None: the base model's native size (512 for SD1.5, 768 for SD2 768-v)
    height: int | None = None
    scheduler: str = "default"
    negative_prompt: str = ""
    lora_scale: float = 1.0

    def check(self) -> None:
        for name, value in (("--width", self.width), ("--height", self.height)):
            if value is not None and (value <= 0 or value % 8):
                raise UserError(f"{name} {value} is not a positive multiple of 8 (Stable Diffusion's VAE needs one)")
        if self.steps < 1:
            raise UserError(f"--steps {self.steps} must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown --scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULERS)}")


def add_model_arguments(parser: argparse.ArgumentParser, base_default: Path | None = None) -> None:
    """--base-model, --device, --dtype, --compile, --allow-base-mismatch: how the pipeline is loaded."""
    group = parser.add_argument_group("model")
    group.add_argument("--base-model", type=Path, default=base_default, required=base_default is None,
                       help="base Stable Diffusion 1.x/2.x diffusers folder (default: %(default)s)")
    group.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu or auto (default: %(default)s)")
    group.add_argument("--dtype", default="auto", choices=DTYPES,
                       help="weights' precision; auto = fp16 on a GPU, fp32 on CPU (default: %(default)s)")
    group.add_argument("--compile", action="store_true", help="torch.compile the UNet (pays off past a few dozen images)")
    group.add_argument("--no-fuse", action="store_true",
                       help="keep the LoRA unfused (slower per step; only needed to change --lora-scale between calls)")
    group.add_argument("--allow-base-mismatch", action="store_true",
                       help="load a checkpoint on a base other than the one it was trained on (the fingerprint check "
                            "becomes a warning)")


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: Settings | None = None) -> None:
    """--steps, --guidance, --scheduler, --negative-prompt, --lora-scale, --width, --height, --batch-size."""
    d = defaults or Settings()
    group = parser.add_argument_group("sampling")
    group.add_argument("--negative-prompt", default=d.negative_prompt, help="negative prompt (default: none)")
    group.add_argument("--steps", type=int, default=d.steps, help="denoising steps (default: %(default)s)")
    group.add_argument("--guidance", type=float, default=d.guidance, help="CFG scale (default: %(default)s)")
    group.add_argument("--scheduler", default=d.scheduler, choices=list(SCHEDULERS),
                       help="sampler; default = the base model's own (default: %(default)s)")
    group.add_argument("--lora-scale", type=float, default=d.lora_scale, help="LoRA strength (default: %(default)s)")
    group.add_argument("--width", type=size_arg, default=d.width,
                       help="image width, a multiple of 8 (default: the base model's native size, 512 for SD1.5)")
    group.add_argument("--height", type=size_arg, default=d.height,
                       help="image height, a multiple of 8 (default: the base model's native size)")
    group.add_argument("--batch-size", type=int, default=1, help="images per pipeline call (default: %(default)s)")


def size_arg(value: str) -> int | None:
    """An image side in pixels; ``auto`` (or empty) = the base model's native size."""
    if value.strip().lower() in ("", "auto", "native"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in pixels: {value!r} (or auto)") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings(steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                        scheduler=args.scheduler, negative_prompt=args.negative_prompt or "",
                        lora_scale=args.lora_scale)
    settings.check()
    if getattr(args, "batch_size", 1) < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    return settings


# --------------------------------------------------------------------------------------------
# Hashes (the WebUI's short forms, so its PNG Info shows familiar values)
# --------------------------------------------------------------------------------------------
_HASH_CACHE: dict[tuple[str, int, int, str], str] = {}


def file_sha256(path: Path, skip_safetensors_header: bool = False) -> str:
    """sha256 of a file; with ``skip_safetensors_header`` the WebUI's "AutoV3" (tensor data only)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(skip_safetensors_header))
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            if skip_safetensors_header:
                header_len = int.from_bytes(fh.read(8), "little")
                fh.seek(8 + header_len)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def base_fingerprint(base: Path) -> str:
    """The base model's identity, exactly as the trainer records it in ``trigger_manifest.json``."""
    from storyboard.artifacts.export import base_fingerprint as trainer_fingerprint  # one definition for both sides

    try:
        return trainer_fingerprint(base)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the base model {base}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Checkpoint folders
# --------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """What one training output folder holds, read and checked before any model is loaded."""

    path: Path
    name: str
    manifest: dict
    lora_file: Path | None
    embeddings: dict[str, Path]  # trigger token -> its embedding file, in manifest order
    initializers: dict[str, str]  # trigger token -> its plain words
    text_encoder_dir: Path | None
    tokenizer_dir: Path | None

    @property
    def tokens(self) -> list[str]:
        return list(self.embeddings)

    def hashes(self) -> dict[str, Any]:
        """Short hashes of the files that shape the images (for PNG text and for resuming)."""
        lora = self.path / WEBUI_LORA_FILE if (self.path / WEBUI_LORA_FILE).is_file() else self.lora_file
        out: dict[str, Any] = {
            "lora": file_sha256(lora, skip_safetensors_header=True)[:12] if lora else None,
            "ti": {tok.strip("<>"): file_sha256(f)[:12] for tok, f in self.embeddings.items()},
        }
        if self.text_encoder_dir:
            weights = sorted(self.text_encoder_dir.glob("*.safetensors")) or sorted(self.text_encoder_dir.glob("*.bin"))
            out["text_encoder"] = hashlib.sha256("".join(file_sha256(w) for w in weights).encode()).hexdigest()[:12]
        return out


def manifest_fingerprint(manifest: Mapping[str, Any]) -> str | None:
    """The base fingerprint the trainer recorded (``base_model.fingerprint``)."""
    base = manifest.get("base_model")
    value = base.get("fingerprint") if isinstance(base, Mapping) else manifest.get("base_fingerprint")
    return value if isinstance(value, str) else None


def read_checkpoint(path: str | os.PathLike, vocab: Vocabulary | None = None) -> Checkpoint:
    """Read a training output folder (the trainer's ``trigger_manifest.json`` says what it holds);
    a missing, foreign or incomplete folder is a ``UserError``."""
    vocab = vocab or load_vocabulary()
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"--checkpoint {path} is a file; pass the training output folder that holds it")
    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        raise UserError(f"{path} is not a training output folder: no {MANIFEST_FILE} (train_trigger02.py writes one "
                        f"beside {LORA_FILE} and {EMBEDDINGS_DIR}/)")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{manifest_file} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tokens"), list):
        raise UserError(f"{manifest_file} lists no trigger tokens ('tokens'); was it written by train_trigger02.py?")
    full = manifest.get("text_encoder_mode") == "full"
    lora = path / LORA_FILE if (path / LORA_FILE).is_file() else None
    te_dir = path / TEXT_ENCODER_DIR if full else None
    tok_dir = path / TOKENIZER_DIR if full else None
    if full and not ((path / TEXT_ENCODER_DIR / "config.json").is_file() and (path / TOKENIZER_DIR).is_dir()):
        raise UserError(f"{path}: the manifest says the text encoder was fully tuned, but {TEXT_ENCODER_DIR}/ or "
                        f"{TOKENIZER_DIR}/ is missing")
    embeddings: dict[str, Path | None] = {}
    initializers: dict[str, str] = {}
    for n, entry in enumerate(manifest["tokens"]):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("token"), str):
            raise UserError(f"{manifest_file}: tokens[{n}] has no 'token'")
        token = entry["token"]
        rel = entry.get("embedding_file") or f"{EMBEDDINGS_DIR}/{token.strip('<>')}.safetensors"
        file = path / rel
        if not file.is_file() and not full:
            raise UserError(f"checkpoint {path} trained {token} but its embedding file {rel} is missing")
        embeddings[token] = file if file.is_file() else None
        term = vocab.shot_for_token(token)
        initializers[token] = entry.get("initializer") or (term.name if term else token.strip("<>"))
    if lora is None and not embeddings:
        raise UserError(f"{path} holds neither {LORA_FILE} nor trigger embeddings")
    return Checkpoint(path=path, name=path.name, manifest=manifest, lora_file=lora, embeddings=embeddings,  # type: ignore[arg-type]
                      initializers=initializers, text_encoder_dir=te_dir, tokenizer_dir=tok_dir)


def check_base_folder(base: str | os.PathLike) -> Path:
    """A diffusers Stable Diffusion 1.x/2.x folder, or a ``UserError`` saying what it is instead."""
    base = Path(base).expanduser()
    if not base.exists():
        raise UserError(f"base model folder not found: {base}")
    index = base / "model_index.json"
    if not index.is_file():
        raise UserError(f"{base} is not a diffusers model folder (no model_index.json)")
    try:
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UserError(f"{index} is not valid JSON") from None
    if "XL" in cls:
        raise UserError(f"{base} is an SDXL model ({cls}); this pipeline handles Stable Diffusion 1.x / 2.x")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (base / sub).is_dir():
            raise UserError(f"{base} is not a Stable Diffusion folder: no {sub}/")
    return base


# --------------------------------------------------------------------------------------------
# Prompts and triggers
# --------------------------------------------------------------------------------------------
def triggers_in(prompt: str, vocab: Vocabulary, extra: Iterable[str] = ()) -> list[str]:
    """The trigger tokens a prompt holds: vocabulary tokens and any token in ``extra``, in order."""
    known = set(vocab.trigger_tokens) | set(extra)
    return [m.group() for m in _TOKEN_RE.finditer(prompt) if m.group() in known]


def resolve_shot(shot: str, vocab: Vocabulary) -> Term:
    """``full``, ``full shot``, ``풀샷``, ``FS``, ``<fs_trg>`` ... -> the shot-size term."""
    term = vocab.lookup(shot, kind="shot_size")
    if term is None:
        known = ", ".join(f"{t.key} ({t.ko[0] if t.ko else t.name})" for t in vocab.shot_sizes)
        raise UserError(f"unknown shot size {shot!r}; known: {known}")
    return term


def _join(*parts: str) -> str:
    return ", ".join(p.strip().strip(",").strip() for p in parts if p and p.strip().strip(","))


def _dedupe_segments(prompt: str) -> str:
    """Drop repeated comma-separated segments (case-insensitive), keeping the first."""
    seen, kept = set(), []
    for segment in prompt.split(","):
        norm = segment.strip().lower()
        if not norm or norm in seen:
            continue
        seen.add(norm)
        kept.append(segment.strip())
    return ", ".join(kept)


def plain_prompt(prompt: str, vocab: Vocabulary, words: Mapping[str, str] | None = None) -> str:
    """Each trigger replaced by its plain words (``<fs_trg>, full shot`` -> ``full shot``)."""
    words = dict(words or {})
    for token, term in vocab.trigger_tokens.items():
        words.setdefault(token, term.name)
    rest = _TOKEN_RE.sub(" ", prompt)
    named = {m.term.key for m in vocab.find(rest, kind="shot_size")}

    def replace(match: re.Match) -> str:
        term = vocab.shot_for_token(match.group())
        if term is not None and term.key in named:  # the prompt already says it in words
            return ""
        return words.get(match.group(), match.group())

    return _dedupe_segments(_TOKEN_RE.sub(replace, prompt))


def prepare_prompt(prompt: str, shot: str | None, vocab: Vocabulary, checkpoint: Checkpoint | None) -> str:
    """Apply the trigger rules (module doc) to one prompt."""
    prompt = (prompt or "").strip()
    trained = checkpoint.tokens if checkpoint else []
    present = triggers_in(prompt, vocab, trained)
    if shot:
        term = resolve_shot(shot, vocab)
        if present:
            if term.token not in present:
                raise UserError(f"--shot {shot} asks for {term.token} but the prompt already holds "
                                f"{', '.join(present)}; drop one of the two")
        else:
            others = {m.term.key for m in vocab.find(prompt, kind="shot_size")} - {term.key}
            if others:
                raise UserError(f"--shot {shot} ({term.name}) but the prompt names another shot size "
                                f"({', '.join(sorted(others))}); drop one of the two")
            has_words = any(m.term.key == term.key for m in vocab.find(prompt, kind="shot_size"))
            prompt = _join(term.token, prompt) if has_words else _join(term.token, term.name, prompt)
            present = [term.token]
    if checkpoint is None:
        return plain_prompt(prompt, vocab)
    missing = [t for t in present if t not in trained]
    if missing:
        listed = ", ".join(f"{t} ({checkpoint.initializers.get(t, '')})" for t in trained) or "none"
        raise UserError(f"{', '.join(dict.fromkeys(missing))} was not trained by checkpoint {checkpoint.path}; "
                        f"it trained: {listed}")
    return prompt


# --------------------------------------------------------------------------------------------
# PNG metadata: the WebUI's "parameters" text and our JSON copy
# --------------------------------------------------------------------------------------------
def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def a1111_parameters(meta: Mapping[str, Any]) -> str:
    """The WebUI's infotext: prompt, ``Negative prompt:``, then one line of ``Key: value`` pairs."""
    fields: list[tuple[str, object]] = [
        ("Steps", meta["steps"]), ("Sampler", meta["sampler"]), ("CFG scale", meta["cfg_scale"]),
        ("Seed", meta["seed"]), ("Size", f"{meta['width']}x{meta['height']}"),
        ("Model hash", meta.get("model_hash")), ("Model", meta.get("model")),
    ]
    if meta.get("lora_hashes"):
        fields.append(("Lora hashes", ", ".join(f"{k}: {v}" for k, v in meta["lora_hashes"].items())))
        fields.append(("Lora scale", meta.get("lora_scale")))
    if meta.get("ti_hashes"):
        fields.append(("TI hashes", ", ".join(f"{k}: {v}" for k, v in meta["ti_hashes"].items())))
    fields.append(("Version", meta.get("version")))
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields if v not in (None, ""))
    text = meta["prompt"]
    if meta.get("negative_prompt"):
        text += f"\nNegative prompt: {meta['negative_prompt']}"
    return f"{text}\n{line}"


_PARAM_RE = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """Read a ``parameters`` text back (the WebUI's own parsing rules): prompt, negative, key/values."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = _PARAM_RE.findall(last)
    values: dict[str, Any] = {}
    if len(pairs) >= 3:
        lines = lines[:-1]
        for key, value in pairs:
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                value = json.loads(value)
            values[key] = value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    values["Prompt"] = "\n".join(prompt)
    values["Negative prompt"] = "\n".join(negative)
    return values


def png_bytes(image, meta: Mapping[str, Any]) -> bytes:
    """The PNG with ``parameters`` (WebUI form) and ``storyboard`` (JSON) text chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_PARAMETERS_KEY, meta["parameters"])
    info.add_text(PNG_RECORD_KEY, json.dumps(dict(meta), ensure_ascii=False, default=str))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``storyboard`` JSON a PNG carries (None when absent or unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = getattr(im, "text", None) or im.info
            raw = text.get(PNG_RECORD_KEY)
    except (OSError, ValueError, SyntaxError):
        return None
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def read_png_parameters(path: str | os.PathLike) -> str | None:
    from PIL import Image

    with Image.open(path) as im:
        return (getattr(im, "text", None) or im.info).get(PNG_PARAMETERS_KEY)


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------
def resolve_device(device: str | None):
    import torch

    if not device or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {device!r} (cuda, cuda:N, mps, cpu or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "fp16" and device.type == "cpu":
        raise UserError("--dtype fp16 needs a GPU; on CPU use fp32 (or bf16)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _quiet_libraries() -> None:
    """The libraries' own loading bars and notices would drown our one progress bar."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------
# The loaded pipeline
# --------------------------------------------------------------------------------------------
@dataclass
class TriggerPipeline:
    """A diffusers pipeline with (or without) one checkpoint applied, plus what PNGs must record."""

    pipe: Any
    base: Path
    checkpoint: Checkpoint | None
    vocab: Vocabulary
    device: Any
    dtype: Any
    fused: bool
    lora_scale: float
    model_hash: str
    checkpoint_hashes: dict = field(default_factory=dict)
    load_seconds: float = 0.0

    @property
    def column(self) -> str:
        return self.checkpoint.name if self.checkpoint else "base"

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def resolve(self, settings: Settings) -> Settings:
        """``settings`` with the size filled in from the base model when not given."""
        size = self.native_size
        return Settings(**{**settings.__dict__, "width": settings.width or size, "height": settings.height or size})

    def prepare_prompt(self, prompt: str, shot: str | None = None) -> str:
        return prepare_prompt(prompt, shot, self.vocab, self.checkpoint)

    def set_scheduler(self, name: str) -> str:
        """Switch the sampler; returns its WebUI label."""
        import diffusers

        cls_name, extra, label = SCHEDULERS[name]
        if cls_name:
            cls = getattr(diffusers, cls_name)
            self.pipe.scheduler = cls.from_config(self._base_scheduler_config, **extra)
            return label
        self.pipe.scheduler = self._base_scheduler_cls.from_config(self._base_scheduler_config)
        return _CLASS_LABELS.get(type(self.pipe.scheduler).__name__, type(self.pipe.scheduler).__name__)

    def set_lora_scale(self, scale: float) -> None:
        if self.checkpoint is None or self.checkpoint.lora_file is None or scale == self.lora_scale:
            return
        if self.fused:
            raise UserError("the LoRA is fused at one scale; load with --no-fuse to change --lora-scale between calls")
        adapters = sorted({a for names in self.pipe.get_list_adapters().values() for a in names})
        self.pipe.set_adapters(adapters, adapter_weights=[scale] * len(adapters))
        self.lora_scale = scale

    def metadata(self, prompt: str, negative: str, seed: int, settings: Settings, sampler: str) -> dict[str, Any]:
        from storyboard import __version__ as version

        meta: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative, "steps": settings.steps, "sampler": sampler,
            "scheduler": settings.scheduler, "cfg_scale": settings.guidance, "seed": seed,
            "width": settings.width, "height": settings.height, "model_hash": self.model_hash,
            "model": self.base.name, "checkpoint": str(self.checkpoint.path) if self.checkpoint else None,
            "lora_hashes": ({self.checkpoint.name: self.checkpoint_hashes["lora"]}
                            if self.checkpoint and self.checkpoint_hashes.get("lora") else {}),
            "lora_scale": self.lora_scale if self.checkpoint and self.checkpoint.lora_file else None,
            "ti_hashes": dict(self.checkpoint_hashes.get("ti", {})),
            "text_encoder_hash": self.checkpoint_hashes.get("text_encoder"),
            "dtype": str(self.dtype).replace("torch.", ""),
            "version": f"storyboard-trigger {version}",
        }
        meta["parameters"] = a1111_parameters(meta)
        return meta

    def generate(self, prompts: Sequence[str], negatives: Sequence[str], seeds: Sequence[int], settings: Settings):
        """One pipeline call; each image gets its own CPU generator, so an image depends only on its
        seed, never on its batch or its shard."""
        import torch

        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(prompts), negative_prompt=list(negatives) if any(negatives) else None,
                num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                width=settings.width, height=settings.height, generator=generators,
            )
        return out.images


def _check_tokens(ckpt: Checkpoint, base: Path) -> None:
    """Refuse a checkpoint whose tokens do not fit the base's tokenizer and text encoder, before loading."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    base_len = len(tokenizer)
    existing = [t for t in ckpt.tokens if t in tokenizer.get_vocab()]
    if existing:
        raise UserError(f"the base tokenizer of {base} already holds {', '.join(existing)}: load the checkpoint on the "
                        f"plain base model it was trained from")
    base_info = ckpt.manifest.get("base_model") if isinstance(ckpt.manifest.get("base_model"), Mapping) else {}
    trained_base = base_info.get("tokenizer_size")
    trained_size = ckpt.manifest.get("tokenizer_size")
    if (isinstance(trained_base, int) and trained_base != base_len) or (
            isinstance(trained_size, int) and trained_size != base_len + len(ckpt.tokens)):
        was = trained_base if isinstance(trained_base, int) else trained_size - len(ckpt.tokens)
        raise UserError(f"tokenizer size mismatch: checkpoint {ckpt.path} was trained on a base tokenizer of {was} "
                        f"tokens (+ {len(ckpt.tokens)} trigger tokens), but {base} has {base_len}; "
                        f"use the base model it was trained on")
    te_config = json.loads((base / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    width = te_config.get("hidden_size") or te_config.get("text_config", {}).get("hidden_size")
    for token, file in ckpt.embeddings.items():
        if file is not None and width and _embedding_width(file) != width:
            raise UserError(f"{file} is a {_embedding_width(file)}-wide embedding but the text encoder of {base} is "
                            f"{width} wide: the checkpoint was trained on another kind of base model")
    if ckpt.text_encoder_dir is not None:
        rows = json.loads((ckpt.text_encoder_dir / "config.json").read_text(encoding="utf-8")).get("vocab_size")
        if isinstance(rows, int) and rows != base_len + len(ckpt.tokens):
            raise UserError(f"tokenizer size mismatch: {ckpt.text_encoder_dir} has {rows} token rows, the base tokenizer "
                            f"{base_len} + {len(ckpt.tokens)} trigger tokens")


def _embedding_width(file: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        keys = list(fh.keys())
        if len(keys) != 1:
            raise UserError(f"{file} holds {len(keys)} tensors; a trigger embedding holds one")
        return int(fh.get_slice(keys[0]).get_shape()[-1])


def load_trigger_pipeline(base: str | os.PathLike, checkpoint: str | os.PathLike | Checkpoint | None = None, *,
                          vocab: Vocabulary | None = None, device: str | None = "auto", dtype: str = "auto",
                          lora_scale: float = 1.0, fuse: bool = True, compile: bool = False,
                          allow_base_mismatch: bool = False, warn=print) -> TriggerPipeline:
    """Load ``base`` and apply a training output folder to it (module doc): every check first, then
    the trainer's own loader (``storyboard.train.preview.load_trained_pipeline``: the plain diffusers
    calls a user makes), then the LoRA fused at ``lora_scale``."""
    started = time.perf_counter()
    vocab = vocab or load_vocabulary()
    base = check_base_folder(base)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) or checkpoint is None else read_checkpoint(checkpoint, vocab)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)

    fingerprint = base_fingerprint(base)
    if ckpt is not None:
        recorded = manifest_fingerprint(ckpt.manifest)
        if recorded and recorded != fingerprint:
            message = (f"base model mismatch: checkpoint {ckpt.path} was trained on a base with fingerprint "
                       f"{recorded.removeprefix('sha256:')[:12]}, but {base} has {fingerprint.removeprefix('sha256:')[:12]}")
            if not allow_base_mismatch:
                raise UserError(message + "; pass the base it was trained on (or --allow-base-mismatch)")
            warn(f"warning: {message} (--allow-base-mismatch)")
        _check_tokens(ckpt, base)

    _quiet_libraries()
    import warnings

    import torch
    from diffusers import StableDiffusionPipeline

    hashes: dict = {}
    fused = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch_dtype -> dtype renames
        if ckpt is None:
            try:
                pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False,
                                                               dtype=torch_dtype)
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot load the base model {base}: {str(exc).splitlines()[0]}") from None
        else:
            from storyboard.train.preview import load_trained_pipeline

            try:
                pipe = load_trained_pipeline(base, ckpt.path, dtype=torch_dtype, device="cpu")
            except (ValueError, RuntimeError, KeyError, OSError) as exc:
                raise UserError(f"checkpoint {ckpt.path} does not load on {base}: "
                                f"{str(exc).strip().splitlines()[0][:300]}") from None
    pipe.set_progress_bar_config(disable=True)
    base_scheduler_cls, base_scheduler_config = type(pipe.scheduler), dict(pipe.scheduler.config)
    if ckpt is not None:
        adapters = sorted({a for names in pipe.get_list_adapters().values() for a in names})
        if adapters:
            if fuse:
                pipe.fuse_lora(lora_scale=lora_scale, adapter_names=adapters)
                pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers (and their cost) go
                fused = True
            else:
                pipe.set_adapters(adapters, adapter_weights=[lora_scale] * len(adapters))
        hashes = ckpt.hashes()
    pipe.to(dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet = torch.compile(pipe.unet, fullgraph=False)
    result = TriggerPipeline(pipe=pipe, base=base, checkpoint=ckpt, vocab=vocab, device=dev, dtype=torch_dtype,
                             fused=fused, lora_scale=lora_scale, model_hash=fingerprint.removeprefix("sha256:")[:10],
                             checkpoint_hashes=hashes)
    result._base_scheduler_cls = base_scheduler_cls  # type: ignore[attr-defined]
    result._base_scheduler_config = base_scheduler_config  # type: ignore[attr-defined]
    result.load_seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------
# Jobs: one image each, written atomically with its metadata
# --------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One image to make: its final prompt, seed and file, plus the record it came from."""

    prompt: str
    negative_prompt: str
    seed: int
    output: Path
    record: dict = field(default_factory=dict)


def batched(items: Sequence[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def run_jobs(tp: TriggerPipeline, jobs: Sequence[Job], settings: Settings, batch_size: int = 1,
             progress_desc: str = "images", extra_meta: Mapping[str, Any] | None = None,
             show_progress: bool = True) -> list[dict]:
    """Make every job's image and write it (PNG + text chunks) atomically; return their metadata."""
    from storyboard.core.cli import progress

    settings = tp.resolve(settings)
    sampler = tp.set_scheduler(settings.scheduler)
    tp.set_lora_scale(settings.lora_scale)
    written: list[dict] = []
    if show_progress:
        bar = progress(None, desc=progress_desc, total=len(jobs), unit="img")
    else:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), disable=True)
    for batch in batched(jobs, batch_size):
        images = tp.generate([j.prompt for j in batch], [j.negative_prompt for j in batch], [j.seed for j in batch], settings)
        for job, image in zip(batch, images):
            meta = {**job.record, **tp.metadata(job.prompt, job.negative_prompt, job.seed, settings, sampler),
                    **(extra_meta or {}), "file": job.output.name}
            atomic_write_bytes(job.output, png_bytes(image, meta))
            written.append(meta)
        bar.update(len(batch))
    bar.close()
    return written


# --------------------------------------------------------------------------------------------
# Prompt files (inference_trigger.py --prompts-file)
# --------------------------------------------------------------------------------------------
def read_prompts_file(path: str | os.PathLike) -> list[dict]:
    """A .txt (one prompt a line, ``#`` comments) or .jsonl (objects with ``prompt`` and optionally
    ``negative_prompt``, ``seed``, ``shot``/``shot_size``, ``id``) file -> records."""
    from storyboard.core.records import read_jsonl

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    records: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for item in read_jsonl(path):
            if item.error:
                raise UserError(f"{path} line {item.line}: {item.error.detail}")
            record = item.record
            if not isinstance(record.get("prompt"), str):
                raise UserError(f"{path} line {item.line}: needs a text field 'prompt'")
            if "seed" in record and not isinstance(record["seed"], int):
                raise UserError(f"{path} line {item.line}: 'seed' must be a whole number")
            record.setdefault("line", item.line)
            records.append(record)
    else:
        text = path.read_text(encoding="utf-8-sig")
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                records.append({"prompt": line, "line": number})
    if not records:
        raise UserError(f"{path} holds no prompts")
    return records


# --------------------------------------------------------------------------------------------
# inference_trigger.py
# --------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png",)


@dataclass
class InferenceResult:
    images: list[dict]
    sidecar: Path
    load_seconds: float
    generate_seconds: float

    def summary_table(self) -> str:
        from storyboard.core.cli import format_table

        rows = [(m["file"], m["seed"], (m["prompt"][:60] + "…") if len(m["prompt"]) > 61 else m["prompt"])
                for m in self.images]
        per_s = len(self.images) / self.generate_seconds if self.generate_seconds else 0.0
        return (format_table(rows, header=("image", "seed", "prompt"))
                + f"\n{len(self.images)} image(s) in {self.generate_seconds:.1f} s ({per_s:.2f} img/s; loading "
                  f"{self.load_seconds:.1f} s); settings in each PNG and in {self.sidecar}")


def output_paths(output: Path, count: int, seeds: Sequence[int]) -> tuple[list[Path], Path]:
    """Where ``count`` images go and the sidecar JSONL: ``x.png`` (one image), ``x-000.png ...``
    (several, sidecar ``x.jsonl``) or a folder (``0000-<seed>.png``, sidecar ``images.jsonl``)."""
    if output.suffix.lower() in IMAGE_SUFFIXES:
        if output.exists() and output.is_dir():
            raise UserError(f"--output {output} is a folder; name a .png file or a folder without a suffix")
        if count == 1:
            return [output], output.with_suffix(".jsonl")
        return [output.with_name(f"{output.stem}-{n:03d}{output.suffix}") for n in range(count)], output.with_suffix(".jsonl")
    if output.suffix and not output.is_dir():
        raise UserError(f"--output {output}: images are written as PNG; name a .png file or a folder")
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file, not a folder")
    return [output / f"{n:04d}-{seed}.png" for n, seed in enumerate(seeds)], output / "images.jsonl"


def _merge_sidecar(sidecar: Path, metas: Sequence[dict]) -> None:
    """Rewrite the sidecar: earlier lines for other files kept, lines for the files just written replaced."""
    from storyboard.core.records import read_jsonl, write_jsonl

    names = {m["file"] for m in metas}
    kept = []
    if sidecar.is_file():
        kept = [item.record for item in read_jsonl(sidecar)
                if item.record is not None and item.record.get("file") not in names]
    write_jsonl(sidecar, [*kept, *metas])


def run_inference(args: argparse.Namespace, warn=print) -> InferenceResult:
    """Everything ``inference_trigger.py`` does after parsing its flags."""
    settings = settings_from_args(args)
    vocab = load_vocabulary(args.vocabulary)
    if args.num_images < 1:
        raise UserError(f"--num-images {args.num_images} must be at least 1")
    if args.prompts_file:
        records = read_prompts_file(args.prompts_file)
    elif args.prompt is not None or args.shot:
        records = [{"prompt": args.prompt or ""}]
    else:
        raise UserError("give --prompt, --shot or --prompts-file")
    scales = {float(r.get("lora_scale", settings.lora_scale)) for r in records}
    fuse = not args.no_fuse and len(scales) == 1 and scales == {settings.lora_scale}

    ckpt = read_checkpoint(args.checkpoint, vocab) if args.checkpoint else None
    # Prompts are checked before the model loads: a wrong trigger costs no loading time.
    planned: list[tuple[dict, str, str, int]] = []
    for record in records:
        shot = record.get("shot") or record.get("shot_size") or args.shot
        try:
            prompt = prepare_prompt(record["prompt"], shot, vocab, ckpt)
        except UserError as exc:
            where = f"{args.prompts_file} line {record['line']}: " if args.prompts_file and "line" in record else ""
            raise UserError(f"{where}{exc}") from None
        negative = record.get("negative_prompt", settings.negative_prompt) or ""
        seed0 = int(record.get("seed", args.seed))
        for n in range(args.num_images):
            planned.append((record, prompt, negative, seed0 + n))
    outputs, sidecar = output_paths(Path(args.output).expanduser(), len(planned), [p[3] for p in planned])

    tp = load_trigger_pipeline(args.base_model, ckpt, vocab=vocab, device=args.device, dtype=args.dtype,
                               lora_scale=settings.lora_scale, fuse=fuse, compile=args.compile,
                               allow_base_mismatch=args.allow_base_mismatch, warn=warn)
    started = time.perf_counter()
    metas: list[dict] = []
    by_scale: dict[float, list[Job]] = {}
    for (record, prompt, negative, seed), out in zip(planned, outputs):
        extra = {k: v for k, v in record.items() if k not in ("prompt", "negative_prompt", "seed", "line")}
        by_scale.setdefault(float(record.get("lora_scale", settings.lora_scale)), []).append(
            Job(prompt, negative, seed, out, extra))
    for scale, jobs in by_scale.items():
        run_settings = Settings(**{**settings.__dict__, "lora_scale": scale})
        metas += run_jobs(tp, jobs, run_settings, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    _merge_sidecar(sidecar, metas)
    return InferenceResult(metas, sidecar, tp.load_seconds, seconds)
