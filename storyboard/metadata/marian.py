"""The ``marian`` translation backend: a local MarianMT folder (opus-mt-ko-en layout) through
``MarianTokenizer`` / ``MarianMTModel``, greedy or beam, batched, on a GPU when present.

A heavy module (torch and transformers at the top): stage 02 imports it only for ``--backend marian``,
after its flags are checked (``storyboard.metadata.translate.make_translator``).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import MarianMTModel, MarianTokenizer
from transformers.utils import logging as hf_logging

from storyboard.core.cli import UserError
from storyboard.core.runtime import resolve_device
from storyboard.core.textnorm import normalize


def folder_fingerprint(folder: Path, extra: str = "") -> str:
    """SHA-256 over every file's name and bytes in a model folder (+ generation settings)."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


class MarianTranslator:
    """A local opus-mt style folder through ``MarianTokenizer`` / ``MarianMTModel``, greedy or beam.
    ``translate.check_marian`` has checked the folder and the batch size (before torch was loaded)."""

    backend = "marian"

    def __init__(self, model_dir: Path, batch_size: int = 32, device: str = "auto",
                 max_new_tokens: int | None = None, num_beams: int | None = None, fp16: bool = False):
        model_dir = Path(model_dir)
        self.device = str(resolve_device(device))  # a string, as run.json records it
        hf_logging.set_verbosity_error()
        if os.environ.get("STORYBOARD_NO_PROGRESS"):
            hf_logging.disable_progress_bar()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
                self.tokenizer = MarianTokenizer.from_pretrained(model_dir)
                self.model = MarianMTModel.from_pretrained(model_dir)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"--model {model_dir}: cannot load it as MarianMT ({exc})") from None
        if fp16 and self.device.startswith("cuda"):
            self.model = self.model.half()
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.generate_kwargs = {"do_sample": False}
        if max_new_tokens:
            self.generate_kwargs["max_new_tokens"] = max_new_tokens
        if num_beams:
            self.generate_kwargs["num_beams"] = num_beams
        settings = json.dumps({**self.generate_kwargs, "fp16": bool(fp16 and self.device.startswith("cuda"))},
                              sort_keys=True)
        self.fingerprint = folder_fingerprint(model_dir, settings)
        self.batches = 0

    def translate(self, texts: Sequence[str]) -> list[str]:
        """Translate in batches of similar length (less padding); results in the order given."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True)
            with torch.inference_mode():
                generated = self.model.generate(**batch.to(self.device), **self.generate_kwargs)
            for i, text in zip(idx, self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                out[i] = normalize(text)
            self.batches += 1
        return out
