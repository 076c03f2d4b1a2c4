"""The settings an image was made with, carried inside its PNG.

A ``parameters`` text chunk in the AUTOMATIC1111 WebUI's form (its PNG Info tab, ComfyUI loaders,
exiftool and most image browsers read it) and a ``storyboard`` chunk with the same fields as JSON
(plus the checkpoint path, dtype and, for validation, the prompt record). ``parse_parameters`` reads
the WebUI text back with the WebUI's own rules.
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
_PARAM_RE = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


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
    info = PngInfo()
    info.add_text(PNG_PARAMETERS_KEY, meta["parameters"])
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


def read_png_parameters(path: str | os.PathLike) -> str | None:
    with Image.open(path) as im:
        return (getattr(im, "text", None) or im.info).get(PNG_PARAMETERS_KEY)
