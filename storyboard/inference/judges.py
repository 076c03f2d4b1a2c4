"""The validation report's shot judges: a learned judge when a judge file is named
(``storyboard.inference.learned_judge``), CLIP zero-shot (which also gives the CLIP score, from the same
image features) when CLIP weights are named, else the OpenCV estimator (no weights). Both come from
``storyboard.clustering.shots``, which loads torch and open_clip, so the report reaches this module
only once its flags and prompts are checked.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from storyboard.clustering.clip import ClipModel, encode_texts, load_clip
from storyboard.clustering.shots import ClipZeroShotJudge, OpenCVShotEstimator
from storyboard.core.vocabulary import Vocabulary
from storyboard.inference.learned_judge import LearnedShotJudge


def load_judge(clip_model: str | None, clip_checkpoint: str | None, vocab: Vocabulary, device: str = "auto",
               judge_file: str | Path | None = None):
    """A learned judge from ``judge_file`` when given, CLIP zero-shot (+ CLIP score) when CLIP weights are
    named, else the OpenCV estimator."""
    if judge_file:
        return LearnedShotJudge.load(judge_file, vocab)
    if clip_model:
        return ClipScorer(load_clip(clip_model, clip_checkpoint or None, device=device), vocab)
    return OpenCVShotEstimator(vocab)


class ClipScorer:
    """CLIP zero-shot shot judge (``storyboard.clustering.shots``) plus CLIP score, sharing image features."""

    def __init__(self, clip: ClipModel, vocab: Vocabulary):
        self.clip = clip
        self.vocab = vocab
        self.zero_shot = ClipZeroShotJudge.from_clip(clip, vocab)
        self.name = f"clip-zero-shot ({clip.name})"

    def features(self, images) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.stack([self.clip.preprocess(img.convert("RGB")) for img in images]).to(self.clip.device)
            return torch.nn.functional.normalize(self.clip.model.encode_image(batch).float(), dim=-1).cpu().numpy()

    def judge(self, images):
        return self.zero_shot.judge_features(self.features(images))

    def clip_scores(self, items: Sequence[tuple[Any, Path, str]], batch_size: int = 16,
                    log: Callable = print) -> dict[Any, float]:
        """``(key, image file, text)`` -> ``{key: 100 x max(cos(image, text), 0)}``."""
        out: dict[Any, float] = {}
        if items:
            log(f"CLIP score for {len(items)} image(s)")
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images = []
            for _, path, _ in chunk:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            feats = self.features(images)
            texts = encode_texts(self.clip, [text for _, _, text in chunk])
            for (key, _, _), f, t in zip(chunk, feats, texts):
                out[key] = round(max(float((f * t).sum()), 0.0) * 100.0, 2)
        return out
