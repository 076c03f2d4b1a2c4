"""A small finalized data set for the clustering tests: real-face composites at known shot sizes in a
``Dataset_fin/`` laid out as ``03_finalize_dataset.py`` writes it, with planted faults."""
from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from support import REPO

FRONT_DOOR = REPO / "Dataset_clustering_method" / "run_clip_clustering.py"
SHOTS = ("extreme_close_up", "close_up", "medium_close_up", "medium", "medium_long", "full", "long", "extreme_long")
WORDS = {"extreme_close_up": "extreme close-up", "close_up": "close-up", "medium_close_up": "medium close-up",
         "medium": "medium shot", "medium_long": "medium long shot", "full": "full shot", "long": "long shot",
         "extreme_long": "extreme long shot"}


def make_dataset(root: Path, per_shot: int = 3, untagged_every: int = 3, faults: bool = True) -> Path:
    """``root/Dataset_fin/{images/, metadata.jsonl}``; returns the metadata path. Every ``untagged_every``-th
    record has no shot size tag. Faults: a byte-identical copy, a re-encoded near-copy, an unreadable
    image, a missing image, a malformed line."""
    from storyboard.devkit.shot_composites import composite

    fin = root / "Dataset_fin"
    (fin / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    n = 0
    for shot in SHOTS:
        for i in range(per_shot):
            image = composite(shot, 320, 240, seed=100 * n + 7).image
            name = f"images/{shot}_{i}.jpg"
            image.save(fin / name, quality=92)
            tagged = n % untagged_every != 0
            words = ([WORDS[shot]] if tagged else []) + ["eye level", "outdoor", "a woman stands in a field"]
            lines.append(json.dumps({
                "id": f"{shot}-{i}", "file_name": name, "text": ", ".join(words),
                "shot_size": shot if tagged else None, "angle": "eye_level", "location": "outdoor",
                "caption_ko": "여자가 들판에 서 있다", "tags_ko": ["실외", "아이레벨"],
                "raw_ref": f"crawl_a.jsonl:{n + 1}",
            }, ensure_ascii=False))
            n += 1
    if faults:
        src = fin / "images" / "full_1.jpg"  # a tagged record: kept over its untagged copies
        (fin / "images" / "copy.jpg").write_bytes(src.read_bytes())
        buf = io.BytesIO()
        Image.open(src).convert("RGB").save(buf, "JPEG", quality=55)
        (fin / "images" / "reencoded.jpg").write_bytes(buf.getvalue())
        (fin / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        base = {"text": "full shot, eye level, outdoor, a woman", "shot_size": "full", "angle": "eye_level",
                "location": "outdoor"}
        lines.append(json.dumps({**base, "id": "copy", "file_name": "images/copy.jpg"}))
        lines.append(json.dumps({**base, "id": "reencoded", "file_name": "images/reencoded.jpg"}))
        lines.append(json.dumps({**base, "id": "broken", "file_name": "images/broken.jpg"}))
        lines.append(json.dumps({**base, "id": "gone", "file_name": "images/gone.jpg"}))
        lines.append('{"id": "half a line", ')
    (fin / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return fin / "metadata.jsonl"


