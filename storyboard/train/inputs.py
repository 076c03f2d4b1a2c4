"""Checks on the base model and the data set that run before anything is trained.

Each problem is one ``UserError`` line naming the path and what to do. Only JSON files, a single-file
base's header and image headers are read here, so a bad input is reported in a second or two, before
torch loads a model (a ``.ckpt`` base is the exception: only torch can list a pickle's tensors).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from storyboard.artifacts.base_model import SD_FAMILIES, BaseModel, resolve_base
from storyboard.core.cli import UserError
from storyboard.core.records import RecordError, read_json_object, read_jsonl, resolve_under
from storyboard.core.vocabulary import Vocabulary, load_vocabulary
from storyboard.train.args import check_args, output_dir
from storyboard.train.checkpoint_folders import find_checkpoint
from storyboard.train.token_specs import TriggerSpec, resolve_trigger_specs

# The pipelines whose folders hold one UNet, one VAE and one CLIP text encoder: SD 1.x / 2.x.
SD_PIPELINES = {
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    "StableDiffusionControlNetPipeline", "StableDiffusionUpscalePipeline", "AltDiffusionPipeline",
}
SDXL_PIPELINES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class BaseModelInfo:
    path: Path
    pipeline_class: str
    prediction_type: str
    cross_attention_dim: int
    text_hidden_size: int
    sample_size: int | None
    model: BaseModel  # how it loads (folder or single file) and what was detected


def check_base_model(path: str | os.PathLike, config: str | os.PathLike | None = None,
                     prediction_type: str | None = None) -> BaseModelInfo:
    """Refuse anything that is not a local SD 1.x/2.x diffusers folder or checkpoint file; return what
    training needs. ``config`` is ``--base_config``, ``prediction_type`` ``--prediction_type``."""
    folder = Path(path).expanduser()
    flag = "--pretrained_model_name_or_path"
    if not folder.exists():
        raise UserError(f"{flag} {path} not found (this trainer works offline: give a local diffusers folder or "
                        ".safetensors / .ckpt file)")
    if folder.is_file():
        base = resolve_base(folder, config=config, prediction_type=prediction_type, families=SD_FAMILIES, flag=flag,
                            config_flag="--base_config")
        unet, text = base.config("unet"), base.config("text_encoder")
        return BaseModelInfo(folder, base.pipeline_class, base.prediction_type, unet["cross_attention_dim"],
                             text["hidden_size"], unet.get("sample_size"), base)
    if config:
        raise UserError(f"--base_config is for a single-file base; {flag} {path} is a folder with its own configs")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise UserError(f"{flag} {path} is not a diffusers Stable Diffusion folder (no model_index.json)")
    index = read_json_object(index_path, f"{flag} file")
    cls = str(index.get("_class_name", ""))
    if cls in SDXL_PIPELINES or "text_encoder_2" in index:
        raise UserError(f"{flag} {path} is an SDXL model ({cls}); this trainer handles SD 1.x / 2.x for now")
    if cls not in SD_PIPELINES:
        raise UserError(f"{flag} {path} holds a {cls or 'unknown'} pipeline, not Stable Diffusion 1.x / 2.x")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise UserError(f"{flag} {path} is not a complete Stable Diffusion folder: {part}/ is missing")
    for part in ("unet", "vae", "text_encoder"):
        weights = [p for p in (folder / part).iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
        if not weights:
            raise UserError(f"{flag} {path}: {part}/ holds no weights (*.safetensors or *.bin)")
    tokenizer_files = {p.name for p in (folder / "tokenizer").iterdir()}
    if not ({"vocab.json", "merges.txt"} <= tokenizer_files or "tokenizer.json" in tokenizer_files):
        raise UserError(f"{flag} {path}: tokenizer/ holds neither vocab.json + merges.txt nor tokenizer.json")
    unet = read_json_object(folder / "unet" / "config.json", f"{flag} file")
    text = read_json_object(folder / "text_encoder" / "config.json", f"{flag} file")
    scheduler = read_json_object(folder / "scheduler" / "scheduler_config.json", f"{flag} file")
    cross = unet.get("cross_attention_dim")
    hidden = text.get("hidden_size")
    if not isinstance(cross, int) or cross != hidden:
        raise UserError(f"{flag} {path}: the UNet's cross_attention_dim ({cross}) does not match the text "
                        f"encoder's hidden_size ({hidden}); not an SD 1.x / 2.x pair")
    base = resolve_base(folder, prediction_type=prediction_type, families=SD_FAMILIES, flag=flag)
    return BaseModelInfo(folder, cls, prediction_type or str(scheduler.get("prediction_type", "epsilon")), cross,
                         hidden, unet.get("sample_size"), base)


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------
@dataclass
class TrainItem:
    """One usable record: the image file and its caption (and the record, untouched)."""

    path: Path
    caption: str
    record: dict = field(repr=False)


@dataclass
class DataScan:
    items: list[TrainItem]
    bad: list[tuple[int, str]]  # (line, why)
    metadata: Path


def _image_problem(path: Path) -> str | None:
    """Why an image cannot be used, reading only its header; None when it looks fine."""
    if not path.is_file():
        return "not found"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"unreadable ({exc.__class__.__name__})"
    if width < 1 or height < 1:
        return "has no pixels"
    return None


def scan_dataset(data_dir: str | os.PathLike, image_column: str = "file_name", caption_column: str = "text",
                 skip_bad: bool = False) -> DataScan:
    """Read ``data_dir/metadata.jsonl`` and check every record's image and caption."""
    folder = Path(data_dir).expanduser()
    flag = "--train_data_dir"
    if not folder.exists():
        raise UserError(f"{flag} {data_dir} not found")
    if not folder.is_dir():
        raise UserError(f"{flag} {data_dir} is a file, not a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"{flag} {data_dir} cannot be read (permission denied)")
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise UserError(f"{flag} {data_dir} has no metadata.jsonl (imagefolder layout: the images plus a "
                        f"metadata.jsonl whose lines hold {image_column!r} and {caption_column!r})")
    if not os.access(metadata, os.R_OK):
        raise UserError(f"{metadata} cannot be read (permission denied)")

    items: list[TrainItem] = []
    bad: list[tuple[int, str]] = []
    for item in read_jsonl(metadata):
        if item.error is not None:
            bad.append((item.line, item.error.detail))
            continue
        record = item.record
        image_rel = record.get(image_column)
        if image_column == "file_name" and image_rel is None:
            image_rel = record.get("image")  # the other common spelling
        caption = record.get(caption_column)
        if not isinstance(caption, str) or not caption.strip():
            bad.append((item.line, f"no caption in field {caption_column!r}"))
            continue
        try:
            path = resolve_under(folder, image_rel)
        except RecordError as exc:
            bad.append((item.line, f"image field {image_column!r}: {exc.detail}"))
            continue
        problem = _image_problem(path)
        if problem:
            bad.append((item.line, f"image {image_rel} {problem}"))
            continue
        items.append(TrainItem(path, caption.strip(), record))

    if bad and not skip_bad:
        line, why = bad[0]
        more = f" ({len(bad)} bad records in all)" if len(bad) > 1 else ""
        raise UserError(f"{metadata} line {line}: {why}{more}; fix the data or pass --skip_bad_records")
    if not items:
        detail = f" ({len(bad)} records, none usable)" if bad else ""
        raise UserError(f"the data set {metadata} is empty{detail}: nothing to train on")
    return DataScan(items, bad, metadata)


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------
@dataclass
class CheckedInputs:
    """What phase 0 of training found: all of it checked, nothing heavy loaded."""

    base: BaseModelInfo
    scan: DataScan
    vocabulary: Vocabulary
    specs: list[TriggerSpec]
    output_dir: Path
    resume_from: Path | None


def check_inputs(args) -> CheckedInputs:
    """Every check that needs no model: flags, base folder, data set, token list, checkpoint to resume.
    A bad input stops here with one line, in about a second."""
    check_args(args)
    base = check_base_model(args.pretrained_model_name_or_path, getattr(args, "base_config", None),
                            args.prediction_type)
    scan = scan_dataset(args.train_data_dir, args.image_column, args.caption_column, args.skip_bad_records)
    vocabulary = load_vocabulary(args.vocabulary)
    specs = resolve_trigger_specs(args.new_tokens, args.token_initializer, vocabulary,
                                  [item.caption for item in scan.items])
    check_tokens_against_files(None if base.model.is_file else base.path, specs)
    out = output_dir(args)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {args.output_dir} is a file, not a folder")
    return CheckedInputs(base, scan, vocabulary, specs, out, find_checkpoint(out, args.resume_from_checkpoint))


def check_tokens_against_files(base: Path | None, specs: list[TriggerSpec]) -> None:
    """The token checks ``storyboard.train.tokens.check_new_tokens`` makes with the real tokenizer, done
    from the tokenizer's files (no transformers import): a token the vocabulary already holds, an
    initializer that is only white space (CLIP's tokenizer drops white space and nothing else).
    ``base`` None (a single-file base, whose tokenizer is built when the models load): the initializer
    check only; ``load_models`` checks the tokens against that tokenizer before any weight loads."""
    known = _known_tokens(base / "tokenizer") if base is not None else {}
    for spec in specs:
        if spec.token in known:
            raise UserError(f"token {spec.token} already exists in the tokenizer of {base} (id {known[spec.token]}); "
                            "pick another token or start from the original base model")
        if not spec.initializer.strip():
            raise UserError(f"initializer {spec.initializer!r} of {spec.token} tokenizes to nothing; give real words "
                            "with --token_initializer")


def _known_tokens(folder: Path) -> dict[str, int]:
    """Every token a tokenizer folder's files name, with its id."""
    known: dict[str, int] = {}
    try:
        if (folder / "vocab.json").is_file():
            known.update(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
        if (folder / "tokenizer.json").is_file():
            data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            known.update((data.get("model") or {}).get("vocab") or {})
            known.update({t["content"]: t["id"] for t in data.get("added_tokens", []) if "content" in t})
        if (folder / "tokenizer_config.json").is_file():
            data = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            for token_id, token in (data.get("added_tokens_decoder") or {}).items():
                if isinstance(token, dict) and "content" in token:
                    known[token["content"]] = int(token_id)
        if (folder / "added_tokens.json").is_file():
            known.update(json.loads((folder / "added_tokens.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise UserError(f"the tokenizer files in {folder} cannot be read ({exc})") from None
    return known
