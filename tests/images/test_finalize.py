"""The finalize stage: squares whose transform maps boxes back, imagefolder output, rejects, workers,
shards, and resume after an interrupted (kill -9) run -- through the front door, as a user runs it."""
from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyboard.clustering.decode import open_for_embedding
from storyboard.core.balanced_set import BALANCED_MARKER, is_balanced_set
from storyboard.core.geometry import box_to_source, box_to_square, transform_from_record
from storyboard.core.records import load_jsonl
from storyboard.core.runtime import parse_shard
from storyboard.images.finalize import FinalizeSettings, finalize_dataset, safe_name
from storyboard.images.squares import detect_subject, make_square

from support import REPO, run_front_door, user_env

SCRIPT = REPO / "Data_preprocessing_method" / "03_finalize_dataset.py"


def run_script(*args, cwd: Path, script: Path = SCRIPT, check: bool = True) -> subprocess.CompletedProcess:
    """03_finalize_dataset.py (or a copy of it) as a user runs it; exit 0 asserted unless ``check=False``."""
    return run_front_door(script, *args, cwd=cwd, check=check)


def write_metadata(sample_data: Path, path: Path, limit: int | None = None, broken: bool = True) -> list[dict]:
    """Translated-style records for the sample images (+ a few broken ones): what 02_translate.py writes."""
    truth = json.loads((sample_data / "ground_truth.json").read_text(encoding="utf-8"))
    records = []
    for i, (rel, info) in enumerate(list(truth["images"].items())[:limit]):
        records.append({"id": f"still-{i:03d}" if i % 4 else f"장면 {i}", "image": rel,
                        "text": f"{info['shot_size'].replace('_', ' ')} shot, {info['angle']}, {info['location']}",
                        "shot_size": info["shot_size"], "angle": info["angle"], "location": info["location"],
                        "caption_ko": "남자가 걷는다", "crawl_extra": {"n": i}})
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if broken:
        lines += [json.dumps({"id": "gone", "image": "no/such.png", "text": "x"}),
                  json.dumps({"id": "escape", "image": "../../etc/passwd", "text": "x"}),
                  json.dumps({"id": "no-text", "image": records[0]["image"]}),
                  json.dumps({"id": records[1]["id"], "image": records[1]["image"], "text": "again"}),
                  "{not json"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return records


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder but run.json (it holds times and counts of this run)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.json" and "shards" not in p.parts}


# --------------------------------------------------------------------------------------------
# Squares
# --------------------------------------------------------------------------------------------
def _marked(width: int, height: int, box) -> np.ndarray:
    image = np.full((height, width, 3), 200, np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = (255, 0, 0)
    return image


def _red_box(square: np.ndarray) -> list[int]:
    ys, xs = np.nonzero((square[..., 0] > 180) & (square[..., 1] < 90))
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("fit", ["pad", "crop", "subject"])
@pytest.mark.parametrize("size_wh", [(300, 200), (200, 320), (257, 255)])
def test_a_box_maps_into_the_square_and_back(fit, size_wh):
    w, h = size_wh
    box = [w // 2 - 20, h // 2 - 15, w // 2 + 30, h // 2 + 25]
    square, t = make_square(_marked(w, h, box), 128, fit, "edge", subject_box=box if fit == "subject" else None)
    assert square.shape == (128, 128, 3)
    mapped = box_to_square(box, t)
    assert np.allclose(_red_box(square), mapped, atol=1.5), (fit, _red_box(square), mapped)
    assert np.allclose(box_to_source(mapped, t), box, atol=1e-6)
    record = {"square": t.as_record(), "source_size": list(t.source_size)}
    assert transform_from_record(json.loads(json.dumps(record))) == t


def test_pad_fills_with_the_edge_colour_or_a_blur_and_keeps_everything():
    image = np.full((100, 300, 3), (10, 20, 30), np.uint8)
    image[40:60, 140:160] = 255
    square, t = make_square(image, 96, "pad", "edge")
    assert square[0, 0].tolist() == [10, 20, 30] and square[-1, -1].tolist() == [10, 20, 30]
    assert t.offset[0] == 0 and t.offset[1] > 0 and abs(t.scale[0] - 96 / 300) < 1e-9
    blurred, _ = make_square(image, 96, "pad", "blur")
    assert blurred.shape == (96, 96, 3)


def test_subject_crop_keeps_the_subject_where_a_centre_crop_loses_it():
    image = np.full((200, 600, 3), 230, np.uint8)
    image[60:140, 20:90] = 0  # the only thing drawn, at the far left
    box, how = detect_subject(image)
    assert how == "edges" and box[0] < 40 and box[2] < 120
    square, t = make_square(image, 64, "subject")
    assert (square < 50).any()
    centre, _ = make_square(image, 64, "crop")
    assert not (centre < 50).any()


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
def test_the_seed_command_line_verbatim(sample_data, tmp_path):
    """`python 03_finalize_dataset.py --image-root ... --metadata metadata_translated.jsonl --out ../Dataset_fin`
    run from inside Data_preprocessing_method/ (default --size 1024), loadable as an imagefolder."""
    folder = tmp_path / "Data_preprocessing_method"
    folder.mkdir()
    shutil.copy(SCRIPT, folder / SCRIPT.name)
    records = write_metadata(sample_data, folder / "metadata_translated.jsonl", limit=2, broken=False)
    image_root = sample_data / "images"
    proc = run_script("--image-root", image_root, "--metadata", "metadata_translated.jsonl", "--out", "../Dataset_fin",
                      cwd=folder, script=Path("03_finalize_dataset.py"))
    assert "written" in proc.stdout
    out = tmp_path / "Dataset_fin"
    written = load_jsonl(out / "metadata.jsonl")
    assert [r["id"] for r in written] == [r["id"] for r in records]
    for record in written:
        with Image.open(out / record["file_name"]) as image:
            assert image.size == (1024, 1024) and image.mode == "RGB"
        with Image.open(out / record["bubble_mask_file"]) as mask:
            assert list(mask.size) == record["source_size"]
    assert (out / "rejects.jsonl").read_text() == ""
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["settings"]["size"] == 1024 and run["summary"]["written"] == 2

    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(dataset) == 2 and dataset[0]["text"] == records[0]["text"]
    assert dataset[0]["image"].size == (1024, 1024)


def test_records_keep_every_field_and_broken_ones_go_to_rejects(sample_data, tmp_path):
    records = write_metadata(sample_data, tmp_path / "meta.jsonl", limit=6)
    out = tmp_path / "Dataset_fin"
    run_script("--image-root", sample_data / "images", "--metadata", tmp_path / "meta.jsonl", "--out", out,
               "--size", 128, "--workers", 1, cwd=tmp_path)
    written = load_jsonl(out / "metadata.jsonl")
    assert len(written) == len(records)
    truth = json.loads((sample_data / "ground_truth.json").read_text(encoding="utf-8"))["images"]
    for source, record in zip(records, written):
        assert {k: record[k] for k in source} == source  # nothing dropped or changed
        info = truth[source["image"]]
        assert record["source_size"] == info["size"]
        assert record["file_name"].startswith("images/") and (out / record["file_name"]).is_file()
        assert record["square"]["size"] == 128 and record["square"]["fit"] == "pad"
        assert (record["bubble_area"] > 0) == bool(info["bubbles"])
        assert "/" not in record["file_name"][len("images/"):]
    assert written[0]["file_name"].startswith("images/장면_0-")  # readable Korean, made safe and unique
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["duplicate", "malformed_json", "missing_field", "missing_image",
                                                   "path_escape"]
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["read"] == len(records) + 5


def test_small_copies_are_the_squares_reduced_as_embedding_would(sample_data, tmp_path):
    """Each square gets ``small/<name>.png``: the square box-reduced by ``size // small_size``, which is
    what the embedding's reduced decode makes of the square itself; ``--small-size 0`` writes none."""
    write_metadata(sample_data, tmp_path / "meta.jsonl", limit=3, broken=False)
    args = (tmp_path / "meta.jsonl", sample_data / "images")
    finalize_dataset(*args, tmp_path / "out", FinalizeSettings(size=256, small_size=64))
    for record in load_jsonl(tmp_path / "out" / "metadata.jsonl"):
        assert record["small_file"] == f"small/{Path(record['file_name']).stem}.png"
        with Image.open(tmp_path / "out" / record["file_name"]) as square, \
                Image.open(tmp_path / "out" / record["small_file"]) as small:
            assert small.size == (64, 64)
            assert np.array_equal(np.asarray(small.convert("RGB")), np.asarray(square.convert("RGB").reduce(4)))
        reduced = open_for_embedding(tmp_path / "out" / record["file_name"], 64)  # what embedding makes of it
        assert np.array_equal(np.asarray(reduced), np.asarray(Image.open(tmp_path / "out" / record["small_file"])))
    finalize_dataset(*args, tmp_path / "none", FinalizeSettings(size=256, small_size=0))
    assert not list((tmp_path / "none" / "small").glob("*"))
    assert "small_file" not in load_jsonl(tmp_path / "none" / "metadata.jsonl")[0]
    # A run with other small copies over the first folder replaces them (the stale ones are removed).
    finalize_dataset(*args, tmp_path / "out", FinalizeSettings(size=256, small_size=0))
    assert not list((tmp_path / "out" / "small").glob("*"))


def test_odd_files_are_rejected_not_crashed_on(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "good.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("hello")
    data = (root / "good.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "folder.png").mkdir()
    records = [{"id": name, "image": name, "text": "t"} for name in ("good.png", "empty.jpg", "text.png", "cut.png",
                                                                     "folder.png")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    stage = finalize_dataset(tmp_path / "m.jsonl", root, tmp_path / "out", FinalizeSettings(size=32), workers=1)
    assert stage.written == 1 and stage.rejected_by_reason == {"unreadable_image": 4}


def test_resume_skips_finished_images_and_redoes_changed_ones(sample_data, tmp_path):
    write_metadata(sample_data, tmp_path / "meta.jsonl", limit=5, broken=False)
    out = tmp_path / "out"
    args = (tmp_path / "meta.jsonl", sample_data / "images", out)
    first = finalize_dataset(*args, FinalizeSettings(size=96), workers=1)
    assert first.extra["images made"] == 5
    before = folder_bytes(out)
    again = finalize_dataset(*args, FinalizeSettings(size=96), workers=1)
    assert again.extra["images made"] == 0 and again.extra["images reused (resume)"] == 5
    assert folder_bytes(out) == before
    other = finalize_dataset(*args, FinalizeSettings(size=64, image_format="jpg"), workers=1)
    assert other.extra["images made"] == 5
    assert not list((out / "images").glob("*.png")), "outputs of the old settings are cleaned up"
    # A changed source image is redone even though its name and the settings are the same.
    root = tmp_path / "root"
    shutil.copytree(sample_data / "images", root)
    records = load_jsonl(tmp_path / "meta.jsonl")
    finalize_dataset(tmp_path / "meta.jsonl", root, out, FinalizeSettings(size=64, image_format="jpg"), workers=1)
    Image.new("RGB", (50, 40), (0, 90, 0)).save(root / records[2]["image"], format="PNG")
    changed = finalize_dataset(tmp_path / "meta.jsonl", root, out, FinalizeSettings(size=64, image_format="jpg"),
                               workers=1)
    assert changed.extra["images made"] == 1
    assert load_jsonl(out / "metadata.jsonl")[2]["source_size"] == [50, 40]


def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_folder(sample_data, tmp_path):
    write_metadata(sample_data, tmp_path / "meta.jsonl")
    common = ["--image-root", sample_data / "images", "--metadata", tmp_path / "meta.jsonl", "--size", 192,
              "--workers", 1]
    run_script(*common, "--out", tmp_path / "clean", cwd=tmp_path)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, common), "--out", str(killed)], cwd=tmp_path,
                            env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / ".state").glob("*.json"))) >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metadata.jsonl").exists()
    done_before = len(list((killed / ".state").glob("*.json")))

    result = run_script(*common, "--out", killed, cwd=tmp_path)
    run = json.loads((killed / "run.json").read_text())
    assert run["summary"]["extra"]["images reused (resume)"] == done_before > 0
    assert folder_bytes(killed) == folder_bytes(tmp_path / "clean")
    assert not list(killed.rglob(".*.tmp-*")), result.stdout


def test_workers_and_shards_give_the_same_dataset(sample_data, tmp_path):
    write_metadata(sample_data, tmp_path / "meta.jsonl", limit=10)
    args = (tmp_path / "meta.jsonl", sample_data / "images")
    settings = FinalizeSettings(size=96)
    finalize_dataset(*args, tmp_path / "one", settings, workers=1)
    finalize_dataset(*args, tmp_path / "two", settings, workers=2)
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    finalize_dataset(*args, tmp_path / "whole", settings, workers=1, shard=parse_shard(None))  # (0, 1): not a shard
    assert folder_bytes(tmp_path / "whole") == folder_bytes(tmp_path / "one")
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["config"]["shard"] is None

    sharded = tmp_path / "sharded"
    parts = [finalize_dataset(*args, sharded, settings, workers=1, shard=(i, 3)) for i in range(3)]
    assert sum(p.read for p in parts) == 15 and not (sharded / "metadata.jsonl").exists()
    assert (sharded / "shards" / "metadata.2-of-3.jsonl").is_file()
    merged = finalize_dataset(*args, sharded, settings, workers=1)
    assert merged.extra["images made"] == 0
    assert folder_bytes(sharded) == folder_bytes(tmp_path / "one")


def test_bad_flags_are_one_line_errors(sample_data, tmp_path):
    write_metadata(sample_data, tmp_path / "meta.jsonl", limit=1, broken=False)
    cases = [(["--metadata", "meta.jsonl"], "--image-root is required"),
             (["--image-root", "nowhere", "--metadata", "meta.jsonl"], "image root is not a folder"),
             (["--image-root", sample_data / "images", "--metadata", "missing.jsonl"], "metadata file not found"),
             (["--image-root", sample_data / "images", "--metadata", "meta.jsonl", "--shard", "3/2"], "--shard"),
             (["--image-root", sample_data / "images", "--metadata", "meta.jsonl", "--size", "4"], "--size")]
    for args, message in cases:
        proc = run_script(*args, "--out", tmp_path / "out", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_names_and_shards():
    taken: set[str] = set()
    assert safe_name("scene-01", taken) == "scene-01"
    assert safe_name("Scene-01", taken).startswith("Scene-01-")  # same name on a case-insensitive disk
    assert safe_name("a/b", taken).startswith("a_b-")
    assert safe_name("장면 1", taken).startswith("장면_1-")
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)


def test_the_front_door_does_not_reach_into_the_clustering_stage():
    """03 tells the balanced set apart through core (``core.balanced_set``), not through the later stage."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert "storyboard.core.balanced_set" in imported
    assert not [m for m in imported if m.startswith("storyboard.clustering")], imported


def test_a_rerun_over_the_balanced_set_says_clustering_must_run_again(sample_data, tmp_path):
    write_metadata(sample_data, tmp_path / "meta.jsonl", limit=2, broken=False)
    out = tmp_path / "Dataset_fin"
    args = ("--image-root", sample_data / "images", "--metadata", tmp_path / "meta.jsonl", "--out", out,
            "--size", 64, "--workers", 1)
    first = run_script(*args, cwd=tmp_path)
    assert "run_clip_clustering.py again" not in first.stdout and not is_balanced_set(out / "metadata.jsonl")
    # What the clustering stage leaves: the same records, marked as its own.
    balanced = [{**r, BALANCED_MARKER: "tag"} for r in load_jsonl(out / "metadata.jsonl")]
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in balanced), encoding="utf-8")
    assert is_balanced_set(out / "metadata.jsonl")
    again = run_script(*args, cwd=tmp_path)
    assert "run Dataset_clustering_method/run_clip_clustering.py again before training" in again.stdout
    assert not is_balanced_set(out / "metadata.jsonl")  # replaced by this stage's own records
