"""A training set in the layout the trainer reads (``Dataset_fin``: images + ``metadata.jsonl`` with
``file_name`` and ``text`` starting with the trigger), drawn fresh from the world's renderer.

This is ``--data-path direct``, the shortcut past collect -> 01 -> 02 -> 03 -> clustering (``stages``,
the default): the images and shot labels go straight into the balanced set's layout.

The captions have the shape the pipeline's own stages give them (02 with the table backend writes the
label words, clustering puts the trigger and its shot name in front; ``storyboard.cluster.trigger_text``):
``<cu_trg>, close-up, eye level, indoor``. With ``detail`` the render's own subject and background
words follow, as a translated caption would.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from storyboard.clustering.cluster import trigger_text
from storyboard.core.records import write_jsonl
from storyboard.core.vocabulary import load_vocabulary
from storyboard.devkit.proof.config import RenderConfig
from storyboard.devkit.proof.renders import ANGLE_WORDS, TRAIN_STREAM, shot_renders


def write_trainset(folder: str | Path, cfg: RenderConfig, seed: int, per_shot: int, detail: bool = False,
                   workers: int = 1, stream: int = TRAIN_STREAM) -> Path:
    """``per_shot`` images of every shot size of the world into ``folder`` (PNG + metadata.jsonl)."""
    vocab = load_vocabulary()
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, image, key, angle, location, caption in shot_renders(cfg, seed, per_shot, workers, stream):
        name = f"images/{key}_{i:05d}.png"
        Image.fromarray(image).save(folder / name)
        words = caption if detail else f"{ANGLE_WORDS[angle]}, {location}"
        term = next(t for t in vocab.shot_sizes if t.key == key)
        records.append({"file_name": name, "text": trigger_text(words, term, vocab), "shot_size": key,
                        "angle": angle, "location": location})
    write_jsonl(folder / "metadata.jsonl", records)
    return folder
