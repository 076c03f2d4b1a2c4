"""A learned shot judge: a small CNN on an RGB thumbnail, loaded from one safetensors file whose
metadata (``storyboard.inference.judge_file``) names its classes and its held-out accuracy.

For images the OpenCV estimator cannot read and CLIP was never taught: the proof world's generated
32-px pictures (``storyboard.devkit.proof`` trains it on the world's ground truth). It has the
report's judge shape (``name``, ``judge(images) -> [guess with .shot_size]``); a "nobody" guess has
``shot_size`` None, which the fidelity table counts as a miss. Its ``name`` carries the held-out
accuracy (so the report prints it beside every fidelity figure) and a short hash of the file (the
report caches judgements by judge name: a retrained judge judges again).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional

from storyboard.core.cli import UserError
from storyboard.core.runtime import sha256_file
from storyboard.core.vocabulary import Vocabulary
from storyboard.inference.judge_file import NOBODY, JudgeSpec, read_judge_file


@dataclass
class LearnedGuess:
    shot_size: str | None   # a vocabulary key; None: "nobody" (no person in the picture)
    score: float            # the network's probability for its answer
    source: str = "learned"


def make_net(classes: int, pixels: int, width: int) -> nn.Module:
    """Pairs of 3x3 convolutions, each pair followed by a 2x pool, down to a 4x4 map, then a linear layer
    on the flattened map: positions are kept, which is what a shot size is (where the head is, how much
    of the frame the figure fills). Two convolutions before the first pool see a figure only 3 px wide
    (a long shot at 32 px) at full resolution."""
    layers: list[nn.Module] = []
    channels, side, stage = 3, pixels, 0
    while side > 4:
        out = width * min(2 ** stage, 4)
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels, side, stage = out, side // 2, stage + 1
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.3), nn.Linear(channels * side * side, classes))


def thumbnails(images: np.ndarray, pixels: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, pixels, pixels) float32 in [-1, 1], area-averaged."""
    small = np.stack([cv2.resize(np.ascontiguousarray(im), (pixels, pixels), interpolation=cv2.INTER_AREA)
                      for im in images])
    return torch.from_numpy(small).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class LearnedShotJudge:
    """Shot size from a thumbnail, with the network and the spec of one judge file."""

    def __init__(self, spec: JudgeSpec, net: nn.Module, digest: str = ""):
        self.spec, self.net = spec, net.eval()
        tag = f" {digest[:8]}" if digest else ""
        self.name = (f"learned judge {spec.path.name}{tag} (CNN on {spec.pixels} px; held out: "
                     f"{spec.accuracy_text()})")

    @classmethod
    def load(cls, path: str | Path, vocab: Vocabulary) -> LearnedShotJudge:
        spec = read_judge_file(path, vocab)
        net = make_net(len(spec.classes), spec.pixels, spec.width)
        try:
            net.load_state_dict(load_file(str(spec.path)))
        except (RuntimeError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--judge {spec.path}: its weights do not fit the network its metadata describes "
                            f"({first})") from None
        return cls(spec, net, sha256_file(spec.path))

    def save(self, path: str | Path) -> Path:
        """Weights + metadata in one safetensors file (no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, str(path),
                  metadata=self.spec.metadata())
        return path

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        """(N, classes) for (N, H, W, 3) uint8 arrays of any size (thumbnails are taken)."""
        return torch.cat([functional.softmax(self.net(thumbnails(images[i:i + batch], self.spec.pixels)), dim=1)
                          for i in range(0, len(images), batch)]).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class indices (into ``spec.classes``)."""
        return self.probabilities(images).argmax(axis=1)

    def judge(self, images) -> list[LearnedGuess]:
        """PIL images -> one guess each (the report's judge interface)."""
        if not len(images):
            return []
        probs = self.probabilities(np.stack([np.asarray(im.convert("RGB")) for im in images]))
        names = [None if c == NOBODY else c for c in self.spec.classes]
        return [LearnedGuess(names[int(p.argmax())], float(p.max())) for p in probs]
