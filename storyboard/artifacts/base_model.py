"""The base model, given as a diffusers folder or as one checkpoint file, checked and described once:
``resolve_base``. Training, inference, validation and line art all take their base through here.

A **folder** (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) is used as it is. A **single file** (``.safetensors``, or ``.ckpt`` read with
``weights_only=True``; how it is read and what it is detected as: ``storyboard.artifacts.base_file``)
needs the configuration diffusers would otherwise fetch from a hub; ours ship in
``storyboard/artifacts/base_configs/`` (the public configurations, value for value, of
stable-diffusion-v1-5, stable-diffusion-2-1-base, stable-diffusion-2-1 and stable-diffusion-xl-base-1.0;
the tokenizers are built offline when a pipeline loads, ``storyboard.artifacts.base_load``):

==========  ==============  ===================================================================
family      prediction      configuration
==========  ==============  ===================================================================
SD 1.x      epsilon         ``sd15`` (512 px, PNDM)
SD 2.x      epsilon         ``sd2`` (2.x-base: 512 px, PNDM)
SD 2.x      v-prediction    ``sd2_v`` (768 px, DDIM)
SDXL        epsilon         ``sdxl`` (1024 px, Euler)
==========  ==============  ===================================================================

Any other pairing (an SD 1.x or SDXL v-prediction fine-tune) keeps the family's configuration with its
scheduler's ``prediction_type`` changed. ``--base-config FOLDER`` (diffusers' own ``config=``) replaces
ours with a diffusers folder describing the file (its configs and tokenizer; no weights needed), for a
checkpoint of another size; without it, a file whose shapes do not fit the family's configuration is
refused before anything loads, naming the part that differs.

``base_fingerprint`` is the identity the trainer records and inference compares: for a folder its
configs, tokenizer and weight samples; for a single file the SHA-256 of the whole file, whose first
ten hex digits are the A1111 WebUI's "Model hash" of the same file. Light module: JSON and file reads
only (a ``.ckpt``'s keys are the one exception, see ``base_file``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storyboard.artifacts.base_file import (
    EPSILON,
    FAMILY_LABELS,
    SD1_TEXT,
    SD2_TEXT,
    SDXL_TEXT,
    SDXL_TEXT_2,
    SINGLE_FILE_SUFFIXES,
    UNET,
    VAE,
    FileKeys,
    detect_family,
    detect_prediction,
    read_file_keys,
)
from storyboard.core.cli import UserError
from storyboard.core.runtime import sha256_file

CONFIGS_DIR = Path(__file__).resolve().parent / "base_configs"
SHIPPED = {("sd1", "epsilon"): "sd15", ("sd2", "epsilon"): "sd2", ("sd2", "v_prediction"): "sd2_v",
           ("sdxl", "epsilon"): "sdxl"}
FAMILY_CONFIG = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}  # for a pairing not in SHIPPED
PREDICTION_TYPES = ("epsilon", "v_prediction")
SD_FAMILIES = ("sd1", "sd2")
FOLDER, SINGLE_FILE = "folder", "single_file"


@dataclass
class BaseModel:
    """A checked base model: where it is, what it is, which configuration describes it."""

    path: Path
    format: str  # FOLDER | SINGLE_FILE
    family: str  # sd1 | sd2 | sdxl
    prediction_type: str  # epsilon | v_prediction (what the scheduler is set to)
    config_dir: Path  # model_index.json + component configs: the folder, ours, or --base-config
    config_name: str  # "folder", "storyboard:sd15", or the --base-config path
    evidence: dict[str, str] = field(default_factory=dict)  # family / prediction -> what decided it
    config_prediction: str = EPSILON  # what the configuration's scheduler says

    @property
    def is_file(self) -> bool:
        return self.format == SINGLE_FILE

    @property
    def shipped_config(self) -> str | None:
        """``sd15`` / ``sd2`` / ``sd2_v`` / ``sdxl`` when the configuration is ours, else None."""
        return self.config_name.removeprefix("storyboard:") if self.config_name.startswith("storyboard:") else None

    @property
    def name(self) -> str:
        """The model's name as the WebUI shows it: the file's stem, or the folder's name."""
        return self.path.stem if self.is_file else self.path.name

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family]

    def config(self, part: str) -> dict[str, Any]:
        """A component's configuration (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``,
        ``scheduler``), as the pipeline will be built from it."""
        name = "scheduler_config.json" if part == "scheduler" else "config.json"
        return _read_json(self.config_dir / part / name)

    @property
    def native_size(self) -> int:
        """The image side the model was trained at: UNet sample size x the VAE's factor."""
        return int(self.config("unet")["sample_size"]) * 2 ** (len(self.config("vae")["block_out_channels"]) - 1)

    @property
    def pipeline_class(self) -> str:
        return "StableDiffusionXLPipeline" if self.family == "sdxl" else "StableDiffusionPipeline"

    def describe(self) -> str:
        """One line saying what was found, e.g. for the run's log and table."""
        if not self.is_file:
            return f"{self.path}: diffusers folder, {self.label}, {self.prediction_type}"
        why = self.evidence.get("prediction")
        pred = f"{self.prediction_type} (from {why})" if why else self.prediction_type
        return (f"{self.path.name}: single file, {self.label} (detected from {self.evidence.get('family', '?')}), "
                f"{pred}; configuration {self.config_name}")

    def record(self) -> dict[str, Any]:
        """What a manifest or a run record keeps about the base (beside its fingerprint)."""
        return {"path": str(self.path), "format": self.format, "family": self.family,
                "prediction_type": self.prediction_type, "config": self.config_name, "detected_from": self.evidence}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object")
    return value


# --------------------------------------------------------------------------------------------
# Resolving a path
# --------------------------------------------------------------------------------------------
def resolve_base(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
                 prediction_type: str | None = None, families: tuple[str, ...] = SD_FAMILIES,
                 flag: str = "--base-model", config_flag: str = "--base-config") -> BaseModel:
    """Check ``path`` (a diffusers folder or one checkpoint file) and say what it is; every problem
    is one ``UserError`` naming ``flag`` (and ``config_flag`` for ``config``). ``families`` are the
    ones the caller can run."""
    path = Path(path).expanduser()
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UserError(f"--prediction-type {prediction_type!r}: choose epsilon or v_prediction")
    if not path.exists():
        raise UserError(f"base model folder not found: {path} ({flag} takes a diffusers folder or one .safetensors "
                        f"/ .ckpt checkpoint file)")
    if path.is_dir():
        if config:
            raise UserError(f"{config_flag} is for a single-file base; {flag} {path} is a folder with its own configs")
        base = _resolve_folder(path, flag, prediction_type)
        _check_family(base.family, families, flag, path)
        return base
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise UserError(f"{flag} {path} is a {path.suffix or 'suffix-less'} file; a base model is a diffusers folder "
                        f"or one {' / '.join(SINGLE_FILE_SUFFIXES)} checkpoint")
    return _resolve_file(path, config, prediction_type, families, flag, config_flag)


def _check_family(family: str, families: tuple[str, ...], flag: str, path: Path) -> None:
    if family not in families:
        wanted = " / ".join(FAMILY_LABELS[f] for f in families)
        raise UserError(f"{flag} {path} is an {FAMILY_LABELS[family]} model; this step runs {wanted}")


def _resolve_folder(path: Path, flag: str, prediction_type: str | None) -> BaseModel:
    index = path / "model_index.json"
    if not index.is_file():
        raise UserError(f"{flag} {path} is not a diffusers model folder (no model_index.json); a single checkpoint "
                        f"file is given by its own path (.safetensors / .ckpt)")
    cls = str(_read_json(index).get("_class_name", ""))
    family = "sdxl" if ("XL" in cls or (path / "text_encoder_2").is_dir()) else None
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (path / sub).is_dir():
            raise UserError(f"{flag} {path} is not a Stable Diffusion folder: no {sub}/")
    if family is None:
        cross = _read_json(path / "unet" / "config.json").get("cross_attention_dim")
        family = "sd2" if cross == 1024 or _read_json(path / "text_encoder" / "config.json").get(
            "hidden_act") == "gelu" else "sd1"
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    own = str(scheduler.get("prediction_type", EPSILON))
    evidence = {"family": f"{index.name} ({cls})"}
    if prediction_type:
        evidence["prediction"] = "--prediction-type"
    return BaseModel(path, FOLDER, family, prediction_type or own, path, "folder", evidence, own)


def _resolve_file(path: Path, config: str | os.PathLike | None, prediction_type: str | None,
                  families: tuple[str, ...], flag: str, config_flag: str) -> BaseModel:
    keys = read_file_keys(path)
    family, family_evidence = detect_family(keys)
    _check_family(family, families, flag, path)
    evidence = {"family": family_evidence}
    if config:
        config_dir = Path(config).expanduser()
        _check_config_folder(config_dir, family, config_flag)
        own = str(_read_json(config_dir / "scheduler" / "scheduler_config.json").get("prediction_type", EPSILON))
        prediction = prediction_type or own
        evidence["prediction"] = "--prediction-type" if prediction_type else f"{config_flag} {config_dir}"
        base = BaseModel(path, SINGLE_FILE, family, prediction, config_dir, str(config_dir), evidence, own)
    else:
        prediction, why = detect_prediction(keys, family, prediction_type)
        evidence["prediction"] = why
        name = SHIPPED.get((family, prediction), FAMILY_CONFIG[family])
        own = str(_read_json(CONFIGS_DIR / name / "scheduler" / "scheduler_config.json")["prediction_type"])
        base = BaseModel(path, SINGLE_FILE, family, prediction, CONFIGS_DIR / name, f"storyboard:{name}", evidence,
                         own)
    check_shapes(keys, base, config_flag)
    return base


def _check_config_folder(folder: Path, family: str, flag: str) -> None:
    """``--base-config``: a diffusers folder with the configs (and tokenizer) of the file's family."""
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{flag} {folder} is not a diffusers folder (no model_index.json)")
    parts = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] + (
        ["text_encoder_2", "tokenizer_2"] if family == "sdxl" else [])
    missing = [p for p in parts if not (folder / p).is_dir()]
    if missing:
        raise UserError(f"{flag} {folder} lacks {', '.join(p + '/' for p in missing)} (a "
                        f"{FAMILY_LABELS[family]} checkpoint needs them)")
    if family != "sdxl" and (folder / "text_encoder_2").is_dir():
        raise UserError(f"{flag} {folder} describes an SDXL model, but the file is {FAMILY_LABELS[family]}")


def _text_parts(family: str) -> list[tuple[str, str, str]]:
    """(config part, token-embedding tensor, layer prefix) of each text encoder in the file."""
    if family == "sd1":
        return [("text_encoder", f"{SD1_TEXT}text_model.embeddings.token_embedding.weight",
                 f"{SD1_TEXT}text_model.encoder.layers.")]
    if family == "sd2":
        return [("text_encoder", f"{SD2_TEXT}token_embedding.weight", f"{SD2_TEXT}transformer.resblocks.")]
    return [("text_encoder", f"{SDXL_TEXT}text_model.embeddings.token_embedding.weight",
             f"{SDXL_TEXT}text_model.encoder.layers."),
            ("text_encoder_2", f"{SDXL_TEXT_2}token_embedding.weight", f"{SDXL_TEXT_2}transformer.resblocks.")]


def check_shapes(keys: FileKeys, base: BaseModel, config_flag: str = "--base-config") -> None:
    """The file's UNet, VAE and text encoders have the widths (and the text encoders at least the
    layers) the configuration builds; else one line naming the first that differs."""
    unet, vae = base.config("unet"), base.config("vae")
    cross = keys.first(UNET, "attn2.to_k.weight")
    checks = [("UNet width", keys.shapes.get(f"{UNET}input_blocks.0.0.weight", (None,))[0],
               unet["block_out_channels"][0]),
              ("UNet cross-attention width", keys.shapes[cross][1] if cross else None, unet["cross_attention_dim"]),
              ("VAE width", keys.shapes.get(f"{VAE}encoder.conv_in.weight", (None,))[0], vae["block_out_channels"][0])]
    for part, embedding, layers in _text_parts(base.family):
        te = base.config(part)
        width = keys.shapes.get(embedding, (None, None))[1]
        count = len({k[len(layers):].split(".")[0] for k in keys.shapes if k.startswith(layers)})
        checks.append((f"{part.replace('_', ' ')} width", width, te["hidden_size"]))
        if count < te["num_hidden_layers"]:
            checks.append((f"{part.replace('_', ' ')} layers", count, f"at least {te['num_hidden_layers']}"))
    for what, found, wanted in checks:
        if found != wanted:
            raise UserError(f"{base.path}: its {what} is {found}, the {base.config_name} configuration's "
                            f"{wanted}: not a standard-size {base.label} checkpoint; pass {config_flag} with a "
                            f"diffusers folder describing it")


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_diffusers_version", "transformers_version", "architectures",
                         "dtype", "torch_dtype", "_commit_hash"}
_file_hashes: dict[tuple[str, int, int], str] = {}


def _weight_file(folder: Path) -> Path | None:
    """The component's main (non-variant) weight file, else any."""
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                 "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))
    return files[0] if files else None


def sample_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last MiB: cheap on multi-GB weights, still content-based."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(size - chunk, chunk))
            h.update(fh.read(chunk))
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The whole file's SHA-256, computed once per process for a given size and modification time."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        _file_hashes[key] = sha256_file(path)
    return _file_hashes[key]


def base_fingerprint(base: BaseModel | str | os.PathLike) -> str:
    """``"sha256:<hex>"``. A folder: its tokenizer files, the UNet and text-encoder configs (minus
    version stamps) and weight samples (size + first/last MiB): two copies of the same model match, a
    different base or a fine-tune does not. A single file: the SHA-256 of the file (its first ten
    digits are the WebUI's model hash). A base that cannot be read is a ``UserError``."""
    path = base.path if isinstance(base, BaseModel) else Path(base)
    try:
        if path.is_file():
            return "sha256:" + file_sha256(path)
        return _folder_fingerprint(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the base model {path}: {exc}") from None


def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for part in ("unet", "text_encoder"):
        config = json.loads((folder / part / "config.json").read_text(encoding="utf-8"))
        config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(f"{part}/config:{json.dumps(config, sort_keys=True)}\n".encode())
        weights = _weight_file(folder / part)
        h.update(f"{part}/weights:{sample_digest(weights) if weights else 'none'}\n".encode())
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        path = folder / "tokenizer" / name
        if path.is_file():
            h.update(f"tokenizer/{name}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()
