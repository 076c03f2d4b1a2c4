"""Throughput and peak memory of the three metadata stages on a generated crawl.

    python bench/bench_metadata.py                      # 200,000 records (about 2 minutes on 2 cores)
    python bench/bench_metadata.py --records 20000 50000 200000   # several sizes: memory flat?
    python bench/bench_metadata.py --shared-images 40   # many records pointing at 40 images instead

Writes everything under a temp folder (removed at the end unless --keep). Each stage runs through its
real front door in a child process, as a user runs it; its wall time and the child's peak resident
memory (``os.wait4`` rusage, so one stage's figure is not mixed with another's) are printed as a table.

The crawl: two JSONL files, Korean captions with HTML remnants, emoji, hashtags and bracketed notes,
tags as lists or comma strings (vocabulary spellings), title spelling variants matched against a
titles CSV, and 5% exact duplicate records. By default every record has its own image (a tiny PNG
with a unique text chunk, so content hashes differ), which makes collect hash and verify one file per
record: the honest cost. ``--shared-images K`` points all records at K images instead (collect then
merges almost everything as duplicates, and the later stages see only K records).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storyboard.core.cli import format_table  # noqa: E402
from storyboard.core.vocabulary import load_vocabulary  # noqa: E402

TITLES = [("Parasite", "기생충", 2019), ("Memories of Murder", "살인의 추억", 2003), ("Oldboy", "올드보이", 2003),
          ("The Host", "괴물", 2006), ("Burning", "버닝", 2018), ("Mother", "마더", 2009),
          ("The Handmaiden", "아가씨", 2016), ("Train to Busan", "부산행", 2016)]
# Captions are put together from parts, so most are distinct (as in a real crawl) and no memo hides the cost.
SUBJECTS = ["남자가", "여자가", "두 형사가", "가족이", "아이가", "노인이", "소녀가", "경찰이", "두 사람이", "군중이"]
PLACES = ["강가에서", "창가에서", "논밭 사이 길에서", "반지하 집에서", "계단에서", "골목길에서", "공원 벤치에서",
          "터널 앞에서", "식탁에서", "옥상에서", "바닷가에서", "지하철에서"]
ACTIONS = ["걷는다", "비를 바라본다", "서 있다", "저녁을 먹는다", "뛰어 내려온다", "신문을 읽는다", "웃고 있다",
           "이야기한다", "울고 있다", "전화를 받는다", "싸운다", "잠든다"]
NOISE = ["", "!!!", " 😀", " [스포]", " #명장면", "&nbsp;", "...", " <b>최고</b>", " ㅠㅠ"]


def _caption(rng: random.Random, i: int) -> str:
    return (f"{rng.choice(SUBJECTS)} {rng.choice(PLACES)} {rng.choice(ACTIONS)}{rng.choice(NOISE)}"
            f" (장면 {i % 5000}){rng.choice(NOISE)}")


def _png_template() -> tuple[bytes, bytes]:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 150)).save(buf, "PNG")
    data = buf.getvalue()
    iend = data.rindex(b"IEND") - 4
    return data[:iend], data[iend:]


def _png_with_text(head: bytes, tail: bytes, text: str) -> bytes:
    body = b"tEXt" + b"id\0" + text.encode()
    return head + struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body)) + tail


def make_crawl(root: Path, records: int, shared_images: int | None, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = load_vocabulary()
    spellings = {kind: [s for t in vocab.of_kind(kind) for s in t.ko] for kind in ("shot_size", "angle", "location")}
    head, tail = _png_template()
    n_images = shared_images or records
    images = root / "images"
    for i in range(n_images):
        path = images / f"{i // 1000:04d}" / f"장면 {i:07d}.png"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png_with_text(head, tail, str(i)))
    with open(root / "titles.csv", "w", encoding="utf-8") as fh:
        fh.write("title,original_title,year,aliases\n")
        for title, original, year in TITLES:
            fh.write(f"{title},{original},{year},\n")
    raw = root / "raw"
    raw.mkdir()
    with open(raw / "crawl_a.jsonl", "w", encoding="utf-8") as crawl_a, \
            open(raw / "crawl_b.jsonl", "w", encoding="utf-8") as crawl_b:
        files = [crawl_a, crawl_b]
        previous = None
        for i in range(records):
            if previous is not None and rng.random() < 0.05:
                line = previous  # an exact duplicate record
            else:
                title, original, year = rng.choice(TITLES)
                shown = rng.choice([title, original, f"{original} ({year})", original.replace(" ", ""), title.upper()])
                tags = [rng.choice(spellings["shot_size"]), rng.choice(spellings["location"])]
                if rng.random() < 0.5:
                    tags.append(rng.choice(spellings["angle"]))
                k = i % n_images
                line = json.dumps({
                    "image": f"{k // 1000:04d}/장면 {k:07d}.png", "title": shown, "caption": _caption(rng, i),
                    "tags": tags if rng.random() < 0.5 else ", ".join(tags), "source_url": f"https://example.org/{i}",
                    "scene": i % 97, "crawled_at": "2024-05-01T10:00:00",
                }, ensure_ascii=False)
            files[i % 2].write(line + "\n")
            previous = line


def run_stage(name: str, argv: list[str], cwd: Path, records_in: int) -> dict:
    """Run one front door in a child process; its wall time and its own peak RSS (``os.wait4``)."""
    env = dict(os.environ, STORYBOARD_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{out}")
    return {"stage": name, "in": records_in, "seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024, "stdout": out}


def _written(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("written"):
            return int(line.split()[-1])
    return 0


def bench(size: int, shared: int | None, keep: bool) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="bench-metadata-"))
    try:
        t0 = time.perf_counter()
        make_crawl(work / "sample_data", size, shared)
        print(f"generated {size} records in {time.perf_counter() - t0:.1f} s under {work}", file=sys.stderr)
        (work / "Dataset_collect_title_method").mkdir()
        prep = work / "Data_preprocessing_method"
        prep.mkdir()
        rows = []
        collect = run_stage("collect", [str(REPO / "Dataset_collect_title_method" / "collect_title_matches.py"),
                                        "--input", "../sample_data/raw", "--image-root", "../sample_data/images",
                                        "--titles", "../sample_data/titles.csv"],
                            work / "Dataset_collect_title_method", size)
        rows.append(collect)
        clean = run_stage("clean (01)", [str(REPO / "Data_preprocessing_method" / "01_preprocess_tags.py"),
                                         "--input", "metadata_raw.jsonl", "--output", "metadata_clean.jsonl"],
                          prep, _written(collect["stdout"]))
        rows.append(clean)
        rows.append(run_stage("translate table (02)", [str(REPO / "Data_preprocessing_method" / "02_translate.py"),
                                                       "--input", "metadata_clean.jsonl",
                                                       "--output", "metadata_translated.jsonl"],
                              prep, _written(clean["stdout"])))
        for row in rows:
            row["size"] = size
        return rows
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            print(f"removing {work} (many small files: can take a while on slow file systems)", file=sys.stderr)
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[200_000], help="crawl sizes to run")
    parser.add_argument("--shared-images", type=int, default=None, help="point all records at this many images")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    rows = [row for size in args.records for row in bench(size, args.shared_images, args.keep)]
    table = [(r["size"], r["stage"], r["in"], f"{r['seconds']:.1f}", f"{r['in'] / r['seconds']:,.0f}",
              f"{r['cpu']:.1f}", f"{r['in'] / r['cpu']:,.0f}", f"{r['peak_mb']:.0f}") for r in rows]
    for size in args.records:
        stages = [r for r in rows if r["size"] == size]
        wall, cpu = sum(r["seconds"] for r in stages), sum(r["cpu"] for r in stages)
        table.append((size, "all three", size, f"{wall:.1f}", f"{size / wall:,.0f}", f"{cpu:.1f}", f"{size / cpu:,.0f}",
                      f"{max(r['peak_mb'] for r in stages):.0f}"))
    print(format_table(table, header=("crawl", "stage", "records in", "wall s", "records/s", "CPU s",
                                      "records/CPU s", "peak RSS MB")))
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
          "times include interpreter start and imports; CPU s = the stage's own user + system time)")


if __name__ == "__main__":
    main()
