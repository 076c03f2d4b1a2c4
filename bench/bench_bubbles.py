"""Speech-bubble masks against the sample generator's exact ground truth.

    python bench/bench_bubbles.py                         # seeds 0-3: 60 + 3 x 100 images
    python bench/bench_bubbles.py --sample-data DIR       # an existing sample set

Figures: mean IoU over images with bubbles (target >= 0.85), false-positive area on images without
(target < 0.5 % of the image), for the detected mask (what ``detect_bubbles`` returns, scored) and the
removed mask (the detected mask grown by 2 px, what is painted out and saved as bubble_mask_file),
then per-bubble IoU (inside each bubble's box) by drawing style, and per image kind / file format.
Results also go to bench/results/bench_bubbles.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def score_set(root: Path) -> dict:
    import cv2
    import numpy as np
    from PIL import Image

    from storyboard.core.imageio import load_rgb
    from storyboard.images.bubbles import bubble_scores, detect_bubbles

    truth = json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))
    images, styles, seconds = [], defaultdict(list), 0.0
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for rel, info in truth["images"].items():
        rgb = load_rgb(root / "images" / rel).rgb
        true = (np.asarray(Image.open(root / info["bubble_mask"]).convert("L")) > 0) if info["bubble_mask"] else None
        start = time.perf_counter()
        pred, _ = detect_bubbles(rgb)
        seconds += time.perf_counter() - start
        detected = bubble_scores(pred, true)
        removed = bubble_scores(cv2.dilate(pred, grow) if pred.any() else pred, true)
        images.append({"image": rel, "kind": info["kind"], "format": info["format"], "detected": detected,
                       "removed": removed})
        p = pred > 0
        t = true if true is not None else np.zeros_like(p)
        for bubble in info["bubbles"]:
            x0, y0, x1, y1 = bubble["box"]
            x0, y0 = max(0, x0 - 3), max(0, y0 - 3)
            bp, bt = p[y0:y1 + 3, x0:x1 + 3], t[y0:y1 + 3, x0:x1 + 3]
            iou = float((bp & bt).sum() / max((bp | bt).sum(), 1))
            outline = bubble["outline_px"]
            fill = tuple(bubble["fill"])
            for key in (f"shape: {bubble['shape']}", f"tail: {'yes' if bubble['tail'] else 'no'}",
                        f"text: {'vertical' if bubble['vertical'] else 'horizontal'}",
                        f"outline: {outline} px" if outline else "outline: none",
                        "fill: white" if fill == (255, 255, 255)
                        else ("fill: black" if max(fill) < 60 else "fill: tint")):
                styles[key].append(iou)
    return {"images": images, "styles": dict(styles), "seconds": seconds}


def summarise(images: list[dict], which: str) -> dict:
    import numpy as np

    ious = [i[which]["iou"] or 0.0 for i in images if i[which]["has_truth"]]
    fps = [i[which]["fp_area"] for i in images if not i[which]["has_truth"]]
    return {"images_with_bubbles": len(ious), "mean_iou": float(np.mean(ious)) if ious else None,
            "median_iou": float(np.median(ious)) if ious else None,
            "share_iou_ge_0.85": float(np.mean([x >= 0.85 for x in ious])) if ious else None,
            "images_without": len(fps), "fp_area_mean": float(np.mean(fps)) if fps else None,
            "fp_area_max": float(np.max(fps)) if fps else None,
            "images_with_any_fp": int(sum(f > 0 for f in fps))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-data", type=Path, action="append",
                        help="sample set folder(s) (default: generate seeds 0-3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--count", type=int, default=100, help="images per generated set (seed 0 keeps the demo's 60)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_bubbles.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("STORYBOARD_NO_PROGRESS", "1")

    import numpy as np

    from storyboard.core.cli import format_table
    from storyboard.devkit.sample_data import generate

    with tempfile.TemporaryDirectory(prefix="bench-bubbles-") as scratch:
        roots = list(args.sample_data or [])
        if not roots:
            for seed in args.seeds:
                root = Path(scratch) / f"seed{seed}"
                generate(root, seed=seed, count=60 if seed == 0 else args.count)
                roots.append(root)
        results = {str(r): score_set(r) for r in roots}

    images = [i for r in results.values() for i in r["images"]]
    seconds = sum(r["seconds"] for r in results.values())
    rows = []
    for name, result in list(results.items()) + [("all", {"images": images})]:
        for which in ("detected", "removed"):
            s = summarise(result["images"], which)
            rows.append((Path(name).name, which, s["images_with_bubbles"], f"{s['mean_iou']:.3f}",
                         f"{s['share_iou_ge_0.85']:.0%}", s["images_without"], f"{s['fp_area_mean']:.4%}",
                         f"{s['fp_area_max']:.4%}"))
    print(format_table(rows, header=("set", "mask", "imgs w/ bubbles", "mean IoU", "IoU>=0.85", "imgs w/o",
                                     "FP area mean", "FP area max")))
    print(f"\ntargets: mean IoU >= 0.85, false-positive area < 0.5 %; detection {seconds / len(images) * 1000:.0f} ms "
          f"per image on this machine ({len(images)} images, 270-640 px)\n")
    styles = defaultdict(list)
    for result in results.values():
        for key, values in result["styles"].items():
            styles[key] += values
    print(format_table([(k, len(v), f"{np.mean(v):.3f}", f"{np.min(v):.3f}") for k, v in sorted(styles.items())],
                       header=("per bubble, by style", "bubbles", "mean IoU", "min IoU")))
    groups = defaultdict(list)
    for image in images:
        if image["detected"]["has_truth"]:
            groups[f"{image['kind']} / {image['format']}"].append(image["detected"]["iou"] or 0.0)
    print()
    print(format_table([(k, len(v), f"{np.mean(v):.3f}") for k, v in sorted(groups.items())],
                       header=("per image, by kind / format", "images", "mean IoU")))
    worst = sorted((i for i in images if i["detected"]["has_truth"]), key=lambda i: i["detected"]["iou"] or 0)[:5]
    print("\nworst images: " + "; ".join(f"{i['image']} {i['detected']['iou'] or 0:.2f}" for i in worst))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"all": {w: summarise(images, w) for w in ("detected", "removed")},
               "per_set": {Path(k).name: {w: summarise(v["images"], w) for w in ("detected", "removed")}
                           for k, v in results.items()},
               "per_style": {k: {"bubbles": len(v), "mean_iou": float(np.mean(v))} for k, v in sorted(styles.items())},
               "ms_per_image": seconds / len(images) * 1000, "images": images}
    args.out.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
