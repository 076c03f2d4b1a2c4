"""A trained folder read and checked before any model is loaded.

``read_checkpoint(path)`` reads the manifest and finds every file it names: a missing, foreign or
incomplete folder is a ``UserError`` (one line). ``manifest_fingerprint`` is the base fingerprint the
trainer recorded (``storyboard.artifacts.base_model.base_fingerprint``), which inference compares with
the base it is given. Only JSON files and file hashes are read here (no torch).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storyboard.artifacts.layout import (
    EMBEDDINGS_DIR,
    LORA_FILE,
    MANIFEST_FILE,
    TEXT_ENCODER_DIR,
    TOKENIZER_DIR,
    WEBUI_LORA_FILE,
    embedding_file,
)
from storyboard.core.cli import UserError
from storyboard.core.runtime import sha256_file
from storyboard.core.vocabulary import Vocabulary, load_vocabulary


# --------------------------------------------------------------------------------------------
# A trained folder
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
        """Short hashes of the files that shape the images (the WebUI's forms, so its PNG Info shows
        familiar values; also what a resumed validation compares)."""
        lora = self.path / WEBUI_LORA_FILE if (self.path / WEBUI_LORA_FILE).is_file() else self.lora_file
        out: dict[str, Any] = {
            "lora": sha256_file(lora, skip_safetensors_header=True)[:12] if lora else None,
            "ti": {tok.strip("<>"): sha256_file(f)[:12] for tok, f in self.embeddings.items()},
        }
        if self.text_encoder_dir:
            weights = sorted(self.text_encoder_dir.glob("*.safetensors")) or sorted(self.text_encoder_dir.glob("*.bin"))
            out["text_encoder"] = hashlib.sha256("".join(sha256_file(w) for w in weights).encode()).hexdigest()[:12]
        return out


def read_manifest(folder: str | os.PathLike) -> dict:
    """``trigger_manifest.json`` as written (no checks: for code that has just written it)."""
    return json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))


def manifest_fingerprint(manifest: Mapping[str, Any]) -> str | None:
    """The base fingerprint the trainer recorded (``base_model.fingerprint``)."""
    base = manifest.get("base_model")
    value = base.get("fingerprint") if isinstance(base, Mapping) else manifest.get("base_fingerprint")
    return value if isinstance(value, str) else None


def _read_checked_manifest(path: Path) -> dict:
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
    return manifest


def read_checkpoint(path: str | os.PathLike, vocab: Vocabulary | None = None) -> Checkpoint:
    """Read a training output folder (the trainer's ``trigger_manifest.json`` says what it holds);
    a missing, foreign or incomplete folder is a ``UserError``."""
    vocab = vocab or load_vocabulary()
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"--checkpoint {path} is a file; pass the training output folder that holds it")
    manifest = _read_checked_manifest(path)
    manifest_file = path / MANIFEST_FILE
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
        rel = entry.get("embedding_file") or embedding_file(token)
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
