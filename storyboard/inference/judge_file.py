"""A learned shot judge's file, read without torch: one ``.safetensors`` file whose header's metadata
(``__metadata__["storyboard_judge"]``, JSON) says what the weights are (the classes in output order,
the thumbnail size, the network width) and how well the judge did on images it never trained on.

The validation front doors take it as ``--judge FILE`` (``JUDGE=FILE`` for the launchers) and check
it here, before any model loads, so a missing or malformed file is one line, not a traceback.
``storyboard.inference.learned_judge`` loads the weights; ``storyboard.devkit.proof`` trains one.
The held-out accuracy is required: the report prints it beside every fidelity figure (a fidelity
figure from a judge of unknown accuracy says nothing).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from storyboard.artifacts.base_file import safetensors_header
from storyboard.core.cli import UserError
from storyboard.core.vocabulary import Vocabulary

FORMAT = "storyboard-shot-judge/1"
METADATA_KEY = "storyboard_judge"
NOBODY = "nobody"  # the class "no person in the picture": a guess without a shot size (a miss)


@dataclass(frozen=True)
class JudgeSpec:
    """What a judge file's metadata says."""

    path: Path
    classes: tuple[str, ...]         # vocabulary shot-size keys in the network's output order, maybe ``nobody``
    pixels: int                      # the network sees a pixels x pixels RGB thumbnail
    width: int                       # channels of its first convolution
    held_out: dict[str, float]       # image set -> accuracy on held-out images of that set (0..1)
    details: dict                    # anything else the trainer recorded (confusion matrices, controls)

    def accuracy_text(self) -> str:
        return ", ".join(f"{100 * v:.1f} % {k}" for k, v in self.held_out.items())

    def metadata(self) -> dict[str, str]:
        """The safetensors ``__metadata__`` that describes these weights (strings only, as the format wants)."""
        return {METADATA_KEY: json.dumps({"format": FORMAT, "classes": list(self.classes), "pixels": self.pixels,
                                          "width": self.width, "held_out_accuracy": self.held_out,
                                          "details": self.details})}


def _header(path: Path) -> dict:
    try:
        header, _ = safetensors_header(path)
    except OSError as exc:
        raise UserError(f"--judge {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UserError(f"--judge {path}: not a safetensors file ({exc})") from None
    return header


def _fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def read_judge_file(path: str | Path, vocab: Vocabulary) -> JudgeSpec:
    """The spec of the judge in ``path``, checked (classes known to ``vocab``, sizes, accuracy); a
    ``UserError`` naming what is wrong otherwise. Reads the header only: no torch, no weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--judge {path}: no such file")
    header = _header(path)
    try:
        meta = json.loads((header.get("__metadata__") or {})[METADATA_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"--judge {path}: no shot-judge metadata in the file "
                        f"(__metadata__[{METADATA_KEY!r}], written by storyboard's judge trainer)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise UserError(f"--judge {path}: unknown judge format {found!r} (this version reads {FORMAT})")
    classes = meta.get("classes")
    known = {t.key for t in vocab.shot_sizes} | {NOBODY}
    if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes) \
            or not all(isinstance(c, str) and c in known for c in classes):
        raise UserError(f"--judge {path}: its classes must be two or more distinct shot-size keys of the "
                        f"vocabulary (or {NOBODY!r}); found {classes!r}")
    pixels, width = meta.get("pixels"), meta.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (pixels, width)):
        raise UserError(f"--judge {path}: 'pixels' and 'width' must be positive integers; found {pixels!r}, {width!r}")
    held = meta.get("held_out_accuracy")
    if not isinstance(held, dict) or not held or not all(isinstance(k, str) and _fraction(v) for k, v in held.items()):
        raise UserError(f"--judge {path}: 'held_out_accuracy' must name at least one image set with its accuracy "
                        f"(0..1) on held-out images; found {held!r}")
    return JudgeSpec(path, tuple(classes), pixels, width, {k: float(v) for k, v in held.items()},
                     meta.get("details") if isinstance(meta.get("details"), dict) else {})
