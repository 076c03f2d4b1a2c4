"""Finalize-stage throughput at 1024 px against the practical ceiling: a bare decode -> resize ->
encode loop over the same files, in the same run, with the same encoder.

    python bench/bench_finalize.py                     # the sample generator's 60 images (seed 0)
    python bench/bench_finalize.py --sample-data DIR --workers 1 2

For each worker count: the bare loop (Pillow decode, RGB, one resize to size x size, OpenCV PNG
encode, file write; N processes for N workers), the stage without bubble removal (--no-bubbles) and
the stage with it. Target: the stage without bubble removal >= 70 % of the bare loop; the bubble pass
is reported as its own cost (ms per image). Each variant runs --repeats times, alternating, and the
best time counts (the machine may be shared). Results also go to bench/results/bench_finalize.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bare_one(args: tuple[str, str, int]) -> None:
    import cv2
    import numpy as np
    from PIL import Image

    source, target, size = args
    with Image.open(source) as image:
        rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if size * size < w * h else cv2.INTER_LANCZOS4
    square = cv2.resize(rgb, (size, size), interpolation=interpolation)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(square, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    Path(target).write_bytes(buf.tobytes())


def _init() -> None:
    import cv2

    cv2.setNumThreads(1)


def bare_loop(files: list[Path], out: Path, size: int, workers: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(f), str(out / f"{i:05d}.png"), size) for i, f in enumerate(files)]
    start = time.perf_counter()
    if workers <= 1:
        for job in jobs:
            _bare_one(job)
    else:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init) as pool:
            pool.map(_bare_one, jobs, chunksize=1)
    return time.perf_counter() - start


def stage(metadata: Path, root: Path, out: Path, size: int, workers: int, bubbles: bool) -> float:
    from storyboard.images.finalize import FinalizeSettings, finalize_dataset

    start = time.perf_counter()
    finalize_dataset(metadata, root, out, FinalizeSettings(size=size, bubbles=bubbles), workers=workers)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-data", type=Path, default=None, help="a sample set (default: generate seed 0)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_finalize.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("STORYBOARD_NO_PROGRESS", "1")

    from storyboard.core.cli import format_table
    from storyboard.devkit.sample_data import generate

    with tempfile.TemporaryDirectory(prefix="bench-finalize-") as scratch:
        scratch = Path(scratch)
        data = args.sample_data
        if data is None:
            data = scratch / "sample"
            generate(data, seed=0, count=60)
        truth = json.loads((data / "ground_truth.json").read_text(encoding="utf-8"))
        rels = list(truth["images"])
        metadata = scratch / "metadata_translated.jsonl"
        metadata.write_text("".join(json.dumps({"id": f"b{i:04d}", "image": rel, "text": "bench"}, ensure_ascii=False)
                                    + "\n" for i, rel in enumerate(rels)), encoding="utf-8")
        files = [data / "images" / rel for rel in rels]
        n = len(files)
        best: dict[tuple[str, int], float] = {}
        variants = [("bare loop", lambda o, w: bare_loop(files, o, args.size, w)),
                    ("stage, no bubbles", lambda o, w: stage(metadata, data / "images", o, args.size, w, False)),
                    ("stage, bubbles", lambda o, w: stage(metadata, data / "images", o, args.size, w, True))]
        for repeat in range(args.repeats):
            for workers in args.workers:
                for name, run in variants:
                    out = scratch / f"out-{name.replace(' ', '_').replace(',', '')}-{workers}"
                    shutil.rmtree(out, ignore_errors=True)  # fresh every time: no resume
                    seconds = run(out, workers)
                    key = (name, workers)
                    best[key] = min(best.get(key, float("inf")), seconds)
                    print(f"  repeat {repeat + 1}, {workers} worker(s), {name}: {n / seconds:.2f} img/s", flush=True)

    rows, results = [], []
    for workers in args.workers:
        bare = n / best[("bare loop", workers)]
        plain = n / best[("stage, no bubbles", workers)]
        full = n / best[("stage, bubbles", workers)]
        bubble_ms = (best[("stage, bubbles", workers)] - best[("stage, no bubbles", workers)]) / n * 1000 * workers
        rows.append((workers, f"{bare:.2f}", f"{plain:.2f}", f"{plain / bare:.0%}", f"{full:.2f}", f"{full / bare:.0%}",
                     f"{bubble_ms:.0f}"))
        results.append({"workers": workers, "bare_loop_img_s": bare, "stage_no_bubbles_img_s": plain,
                        "stage_no_bubbles_vs_loop": plain / bare, "stage_bubbles_img_s": full,
                        "stage_bubbles_vs_loop": full / bare, "bubble_ms_per_image_per_core": bubble_ms})
    print(f"\n{n} images (270-640 px, mixed formats) -> {args.size} px PNG squares, best of {args.repeats}\n")
    print(format_table(rows, header=("workers", "bare loop img/s", "stage (no bubbles) img/s", "vs loop",
                                     "stage (bubbles) img/s", "vs loop", "bubble removal ms/img")))
    print("\ntarget: stage without bubble removal >= 70 % of the bare loop")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"images": n, "size": args.size, "cpu_count": os.cpu_count(),
                                    "platform": platform.platform(), "results": results}, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
