"""The proof's training set through the data stages, as a user's crawl goes: the world's renders as a
raw crawl (one JSONL line per image with Korean tags for its shot size, angle and location, a title from
a titles CSV) through ``collect_title_matches.py`` -> ``01_preprocess_tags.py`` -> ``02_translate.py``
(table backend) -> ``03_finalize_dataset.py`` (at the world's size, PNG, no bubbles: renders have none)
-> ``run_clip_clustering.py`` (a tiny random CLIP; clusters named by the tags' majority, ``--k`` = the
number of shot sizes; near-duplicate removal off: a random CLIP sees all 32-px renders as alike) to the
balanced ``Dataset_fin/metadata.jsonl`` with trigger captions.

The stages' own accounting is kept: ``check_accounting`` reads each stage's ``.run.json`` and the
proof stops if an image was rejected anywhere (every render is a clean, labelled image).
"""
from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from storyboard.core.cli import UserError
from storyboard.core.records import write_jsonl
from storyboard.core.vocabulary import load_vocabulary
from storyboard.devkit.proof.config import RenderConfig
from storyboard.devkit.proof.renders import shot_renders
from storyboard.devkit.tiny import build_tiny_open_clip

DATA = "world_data"                  # <work>/world_data: the crawl (raw/), its images and the titles list
TITLE = ("Proof World", "증명 세계")  # the one film of the crawl: its title and Korean original
METADATA = "Data_preprocessing_method"


def write_crawl(work: Path, cfg: RenderConfig, seed: int, per_shot: int, workers: int = 1) -> Path:
    """``per_shot`` renders of each shot size as a crawl: ``world_data/images/<shot>/NNNNN.png``,
    ``world_data/raw/crawl.jsonl`` (Korean tags) and ``world_data/titles.csv``; returns the folder."""
    vocab = load_vocabulary()
    folder = work / DATA
    korean = {t.key: t.ko[0] for t in (*vocab.shot_sizes, *vocab.angles, *vocab.locations)}
    records = []
    for i, image, key, angle, location, caption in shot_renders(cfg, seed, per_shot, workers):
        rel = f"{key}/{i:05d}.png"
        (folder / "images" / key).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / "images" / rel)
        records.append({"image": rel, "title": TITLE[1], "caption": caption,
                        "tags": [korean[key], korean[angle], korean[location]]})
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "raw" / "crawl.jsonl", records)
    with (folder / "titles.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["title", "original_title", "year", "aliases"])
        writer.writerow([TITLE[0], TITLE[1], 2026, TITLE[1]])
    return folder


def stage_commands(repo: Path, size: int, shots: int, workers: int) -> list[tuple[str, list[object]]]:
    """(name, argv) of each data stage, run from the proof's work folder (the seed's root)."""
    py, meta = sys.executable, METADATA
    return [
        ("collect", [py, repo / "Dataset_collect_title_method" / "collect_title_matches.py", "--input", f"{DATA}/raw",
                     "--image-root", f"{DATA}/images", "--titles", f"{DATA}/titles.csv",
                     "--output", f"{meta}/metadata_raw.jsonl"]),
        ("01 tags", [py, repo / "Data_preprocessing_method" / "01_preprocess_tags.py",
                     "--input", f"{meta}/metadata_raw.jsonl", "--output", f"{meta}/metadata_clean.jsonl"]),
        ("02 translate", [py, repo / "Data_preprocessing_method" / "02_translate.py", "--backend", "table",
                          "--input", f"{meta}/metadata_clean.jsonl", "--output", f"{meta}/metadata_translated.jsonl"]),
        ("03 finalize", [py, repo / "Data_preprocessing_method" / "03_finalize_dataset.py",
                         "--image-root", f"{DATA}/images", "--metadata", f"{meta}/metadata_translated.jsonl",
                         "--out", "Dataset_fin", "--size", size, "--no-bubbles", "--format", "png",
                         "--small-size", 0, "--workers", workers]),
        ("clustering", [py, repo / "Dataset_clustering_method" / "run_clip_clustering.py",
                        "--clip-model", "local-dir:clip_tiny", "--naming", "labels", "--k", shots,
                        "--dedupe-threshold", "1.01"]),
    ]


def run_data_stages(work: Path, repo: Path, cfg: RenderConfig, seed: int, per_shot: int, workers: int,
                    run: Callable[[str, list[object]], None]) -> dict:
    """Crawl -> balanced ``Dataset_fin``; ``run(step, argv)`` runs one front door. Returns each stage's
    summary (read / written / rejected), from its ``.run.json``."""
    write_crawl(work, cfg, seed, per_shot, workers)
    if not (work / "clip_tiny").is_dir():
        build_tiny_open_clip(work / "clip_tiny", seed)
    for name, argv in stage_commands(repo, cfg.size, len(cfg.shots), workers):
        run(name, argv)
    return check_accounting(work, per_shot * len(cfg.shots))


def check_accounting(work: Path, count: int) -> dict:
    """Every stage kept every render: a reject means the path lost images the proof counted on."""
    files = {"collect": work / METADATA / "metadata_raw.run.json",
             "01 tags": work / METADATA / "metadata_clean.run.json",
             "02 translate": work / METADATA / "metadata_translated.run.json",
             "03 finalize": work / "Dataset_fin" / "run.json",
             "clustering": work / "Dataset_fin" / "clustering.run.json"}
    summaries = {}
    for name, path in files.items():
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"] if path.is_file() else None
        summaries[name] = summary
        if summary is not None and (summary.get("read") != count or summary.get("written") != count):
            raise UserError(f"proof data stage {name!r} kept {summary.get('written')} of {summary.get('read')} "
                            f"records ({count} renders went in): see {path}")
    return summaries
