"""The settings an image was made with, carried inside its PNG.

Text chunks, each for the tool that reads it:

* ``parameters``: the AUTOMATIC1111 WebUI's infotext (its *PNG Info* tab and *Send to txt2img* read
  it, so do most image browsers): the prompt in the WebUI's form (``fs_trg, ..., <lora:train_fs:1>``:
  ``storyboard.inference.handoff``), ``Negative prompt:``, then one line of ``Key: value`` pairs;
* ``prompt`` and ``workflow``: ComfyUI's API graph and editor graph (what ComfyUI's own SaveImage writes;
  dropping the PNG on ComfyUI opens the graph): ``storyboard.artifacts.comfyui``;
* ``storyboard``: our record as JSON, the same fields as the sidecar JSONL (our exact diffusers prompt,
  the prompt as given, the checkpoint path, dtype and, for validation, the prompt record).

``parse_parameters`` reads the infotext back by the rules of the WebUI's paste
(``parse_generation_parameters`` in its ``modules/infotext_utils.py``).
"""
from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PNG_PARAMETERS_KEY = "parameters"  # the key the A1111 WebUI reads
PNG_RECORD_KEY = "storyboard"  # our JSON copy of the same fields
# The WebUI's rules: a key starts with a word character and has two characters or more (letters,
# digits, spaces, '-', '/'); a value is a JSON string in double quotes or runs to the next comma.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_LABEL = "Negative prompt:"


def _quote(value: object) -> str:
    """The WebUI's quoting: JSON-quoted only when the value holds a comma, a colon or a line break."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(meta: Mapping[str, Any]) -> str:
    """The WebUI's infotext: prompt (its WebUI form when the record has one), ``Negative prompt:``,
    then one line of ``Key: value`` pairs."""
    fields: list[tuple[str, object]] = [
        ("Steps", meta["steps"]), ("Sampler", meta["sampler"]), ("CFG scale", meta["cfg_scale"]),
        ("Seed", meta["seed"]), ("Size", f"{meta['width']}x{meta['height']}"),
        ("Model hash", meta.get("model_hash")), ("Model", meta.get("model")),
    ]
    if meta.get("lora_hashes"):
        fields.append(("Lora hashes", ", ".join(f"{k}: {v}" for k, v in meta["lora_hashes"].items())))
    if meta.get("ti_hashes"):
        fields.append(("TI hashes", ", ".join(f"{k}: {v}" for k, v in meta["ti_hashes"].items())))
    fields.append(("Version", meta.get("version")))
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields if v not in (None, ""))
    text = meta.get("webui_prompt") or meta["prompt"]
    if meta.get("negative_prompt"):
        text += f"\n{NEGATIVE_LABEL} {meta['negative_prompt']}"
    return f"{text}\n{line}"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def parse_parameters(text: str) -> dict[str, Any]:
    """A ``parameters`` text read as the WebUI's paste reads it: ``Prompt``, ``Negative prompt`` and
    each ``Key: value`` of the last line (when it holds three pairs or more); a ``WxH`` value becomes
    ``Key-1`` and ``Key-2`` (``Size-1``, ``Size-2``), as the WebUI fills its width and height."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM_RE.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_LABEL):
            in_negative = True
            line = line[len(NEGATIVE_LABEL):].strip()
        (negative if in_negative else prompt).append(line)
    values: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM_RE.findall(last):
        value = _unquote(value)
        size = _SIZE_RE.match(value)
        if size:
            values[f"{key}-1"], values[f"{key}-2"] = size.group(1), size.group(2)
        else:
            values[key] = value
    return values


def png_bytes(image, meta: Mapping[str, Any], chunks: Mapping[str, str] | None = None) -> bytes:
    """The PNG with ``parameters`` (WebUI form), ``storyboard`` (JSON) and ``chunks`` (ComfyUI's
    ``prompt`` and ``workflow``) text chunks."""
    info = PngInfo()
    info.add_text(PNG_PARAMETERS_KEY, meta["parameters"])
    for key, text in (chunks or {}).items():
        info.add_text(key, text)
    info.add_text(PNG_RECORD_KEY, json.dumps(dict(meta), ensure_ascii=False, default=str))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``storyboard`` JSON a PNG carries (None when absent or unreadable)."""
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


def read_png_text(path: str | os.PathLike, key: str) -> str | None:
    """One text chunk of a PNG (None when absent)."""
    with Image.open(path) as im:
        return (getattr(im, "text", None) or im.info).get(key)


def read_png_parameters(path: str | os.PathLike) -> str | None:
    return read_png_text(path, PNG_PARAMETERS_KEY)
