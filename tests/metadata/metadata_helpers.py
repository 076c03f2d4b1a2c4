"""Small hand-made crawls for the metadata stage tests (collect, tags, translate).

``make_crawl(root)`` writes ``root/images/...``, ``root/raw/crawl_a.jsonl``, ``root/raw/crawl_b.jsonl``
and ``root/titles.csv`` and returns what each raw line should become (``EXPECTED``), so a test can
check every reason. Front doors are run through ``support.run_front_door`` as a user runs them.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from support import REPO, read_jsonl, run_front_door

COLLECT = REPO / "Dataset_collect_title_method" / "collect_title_matches.py"
TAGS = REPO / "Data_preprocessing_method" / "01_preprocess_tags.py"
TRANSLATE = REPO / "Data_preprocessing_method" / "02_translate.py"

TITLES_CSV = (
    "title,original_title,year,aliases\n"
    "Parasite,기생충,2019,Gisaengchung|패러사이트\n"
    "Memories of Murder,살인의 추억,2003,\n"
    "Oldboy,올드보이,2003,\n"
    "Oldboy,올드보이,2013,\n"
)


def _image(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), colour).save(path, fmt)


def _lines(records: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


# crawl file:line -> what collect must do with it ("kept" or a reject reason)
EXPECTED = {
    "crawl_a.jsonl:1": "kept",
    "crawl_a.jsonl:2": "kept",
    "crawl_a.jsonl:3": "duplicate",  # same image bytes as a:4 under another name, no caption: poorer
    "crawl_a.jsonl:4": "kept",
    "crawl_a.jsonl:5": "missing_image",
    "crawl_a.jsonl:6": "unreadable_image",
    "crawl_a.jsonl:7": "unreadable_image",
    "crawl_a.jsonl:8": "path_escape",
    "crawl_a.jsonl:9": "path_escape",
    "crawl_a.jsonl:10": "wrong_type",
    "crawl_a.jsonl:11": "wrong_type",
    "crawl_a.jsonl:12": "wrong_type",
    "crawl_a.jsonl:13": "missing_field",
    "crawl_a.jsonl:14": "missing_field",
    "crawl_a.jsonl:15": "unmatched_title",
    "crawl_a.jsonl:16": "ambiguous_title",
    "crawl_a.jsonl:17": "kept",
    "crawl_a.jsonl:18": "malformed_json",
    "crawl_b.jsonl:1": "duplicate",  # exact copy of a:1
    "crawl_b.jsonl:2": "kept",
    "crawl_b.jsonl:4": "kept",  # line 3 is blank
    "crawl_b.jsonl:5": "malformed_json",
}


def make_crawl(root: Path) -> Path:
    images = root / "images"
    _image(images / "기생충" / "장면 01.png", (200, 30, 30))
    _image(images / "살인의 추억" / "논두렁 컷.jpg", (30, 200, 30), "JPEG")
    _image(images / "b.png", (30, 30, 200))
    (images / "b copy.png").write_bytes((images / "b.png").read_bytes())
    (images / "broken.png").write_bytes(b"this is not an image")
    (images / "zero.png").write_bytes(b"")
    _image(images / "oldboy.png", (120, 120, 0))
    _image(images / "c.png", (0, 120, 120))
    _image(images / "d.png", (90, 0, 90))
    first = {"image": "기생충/장면 01.png", "title": "기생충 (2019)", "source_url": "https://example.org/1",
             "caption": "남자가 <b>강</b>을 따라 걷는다!!! 😀 #풀샷 [스포주의]", "tags": "풀 샷, 야외",
             "scene": 12, "crawled_at": "2024-05-01T10:00:00"}
    crawl_a = [
        first,
        {"image": "살인의 추억/논두렁 컷.jpg", "title": "살인의  추억", "caption": "형사가 논두렁을 본다",
         "tags": ["클로즈업", "실외"], "source_url": "https://example.org/2"},
        {"image": "b.png", "title": "ＰＡＲＡＳＩＴＥ", "caption": "", "tags": ["미디엄샷"]},
        {"image": "b copy.png", "title": "Parasite", "caption": "가족이 계단을 내려온다",
         "tags": ["미디엄 샷", "실내"], "scene": 3},
        {"image": "nowhere.png", "title": "Parasite", "caption": "없음"},
        {"image": "broken.png", "title": "Parasite"},
        {"image": "zero.png", "title": "Parasite"},
        {"image": "../outside.png", "title": "Parasite"},
        {"image": "/etc/passwd", "title": "Parasite"},
        {"image": "c.png", "title": 2019},
        {"image": "c.png", "title": "Parasite", "caption": ["a", "list"]},
        {"image": "c.png", "title": "Parasite", "tags": ["풀샷", 5]},
        {"title": "Parasite", "caption": "no image field"},
        {"image": "c.png", "title": "   "},
        {"image": "c.png", "title": "괴물"},
        {"image": "oldboy.png", "title": "올드보이"},
        {"image": "oldboy.png", "title": "Oldboy (2013)", "caption": "복도 격투 장면", "tags": ["와이드샷"]},
        '{"image": "c.png", "title": "Parasi',
    ]
    crawl_b = [
        first,
        {"image": "c.png", "title": "살인의추억", "caption": "비 오는 밤", "tags": []},
        "",
        {"image": "d.png", "title": "Parasit", "caption": "창밖을 본다", "tags": "바스트샷"},
        "[1, 2, 3]",
    ]
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "crawl_a.jsonl").write_text(_lines(crawl_a), encoding="utf-8")
    # crawl_b is written the way Windows tools write it: BOM and CRLF.
    (raw / "crawl_b.jsonl").write_bytes(b"\xef\xbb\xbf" + _lines(crawl_b).replace("\n", "\r\n").encode("utf-8"))
    (root / "titles.csv").write_text(TITLES_CSV, encoding="utf-8")
    return root


def outcome_by_ref(output: Path, rejects: Path) -> dict[str, str]:
    """'crawl_a.jsonl:3' -> 'kept' or the reject reason, from a collect run's two files."""
    found: dict[str, str] = {}
    for record in read_jsonl(output):
        found[record["raw_ref"]] = "kept"
    for entry in read_jsonl(rejects):
        ref = f"{Path(entry['source']).name}:{entry['line']}"
        assert ref not in found, f"{ref} is both kept and rejected"
        found[ref] = entry["reason"]
    return found


def seed_layout(work: Path, *scripts: Path) -> Path:
    """``work/Data_preprocessing_method/`` holding links to the real scripts, so the seed's command
    lines (``python 01_preprocess_tags.py ...``) run verbatim there without touching the repository."""
    folder = work / scripts[0].parent.name
    folder.mkdir(parents=True, exist_ok=True)
    for script in scripts:
        link = folder / script.name
        if not link.exists():
            link.symlink_to(script)
    return folder


def sample_truth(sample_data: Path) -> dict:
    return json.loads((Path(sample_data) / "ground_truth.json").read_text(encoding="utf-8"))


def collect_sample(sample_data: Path, work: Path) -> Path:
    """Run collect on the sample data from ``work/Dataset_collect_title_method/`` as the demo does;
    returns ``work/Data_preprocessing_method/`` where its default output lands."""
    folder = seed_layout(work, COLLECT)
    proc = run_front_door("collect_title_matches.py", "--input", Path(sample_data) / "raw",
                      "--image-root", Path(sample_data) / "images", "--titles", Path(sample_data) / "titles.csv",
                      cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work / "Data_preprocessing_method"
