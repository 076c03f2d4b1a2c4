"""The learned shot judge (``--judge FILE``): one safetensors file with its classes and held-out accuracy
in the metadata, loaded by the product, plugged into the validation report through the same judge
interface as the OpenCV and CLIP judges, with its held-out accuracy in the judge's name.

The judge here is learned in the fixture, in a second, from synthetic pictures whose shot size is the
size of one disc (close-up: a large disc, medium: a middle one, long: a small one, nobody: none), at
random places and colours, so it has something real to learn. The negative control is the same file
with each weight tensor's values shuffled: same metadata, same shapes, and it must judge differently.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from storyboard.core.vocabulary import load_vocabulary
from storyboard.devkit.proof.config import JudgeConfig
from storyboard.devkit.proof.judge_training import save_world_judge, train_judge
from storyboard.inference.judge_file import METADATA_KEY, read_judge_file
from storyboard.inference.learned_judge import LearnedShotJudge

from support import REPO, assert_one_line_error, run_command, run_front_door, user_env

SHOTS = ["close_up", "medium", "long"]
RADIUS = {"close_up": 13, "medium": 7, "long": 3}
REPORT = REPO / "validation" / "report.py"


def disc_image(rng: np.random.Generator, shot: str | None) -> np.ndarray:
    image = np.empty((32, 32, 3), np.uint8)
    image[:] = rng.integers(120, 256, 3)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    if shot:
        r = RADIUS[shot]
        cy, cx = rng.integers(r, 32 - r, 2)
        yy, xx = np.mgrid[:32, :32]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 90, 3)
    return image


def disc_set(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(SHOTS)
    return np.stack([disc_image(rng, SHOTS[k]) for k in labels]), labels


@pytest.fixture(scope="module")
def judge_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    images, labels = disc_set(0, 96)
    empty = np.stack([disc_image(np.random.default_rng(100 + i), None) for i in range(24)])
    judge, report = train_judge(images, images, labels, SHOTS, JudgeConfig(pixels=32, width=8, epochs=30), 0,
                                nobody=(empty,))
    return save_world_judge(tmp_path_factory.mktemp("judge"), judge, report)


def shuffled_copy(path: Path, dest: Path) -> Path:
    """The same file with every tensor's values permuted: same metadata, same shapes, no knowledge."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        metadata = json.loads(f.read(size))["__metadata__"]
    gen = torch.Generator().manual_seed(1)
    tensors = {k: v.flatten()[torch.randperm(v.numel(), generator=gen)].reshape(v.shape)
               for k, v in load_file(str(path)).items()}
    save_file(tensors, str(dest), metadata=metadata)
    return dest


def accuracy(judge: LearnedShotJudge, seed: int) -> float:
    images, labels = disc_set(seed, 60)
    guesses = judge.judge([Image.fromarray(im) for im in images])
    return float(np.mean([g.shot_size == SHOTS[k] for g, k in zip(guesses, labels)]))


def test_judge_file_loads_names_its_accuracy_and_judges(judge_file, tmp_path):
    vocab = load_vocabulary()
    spec = read_judge_file(judge_file, vocab)
    assert spec.classes == (*SHOTS, "nobody") and spec.pixels == 32 and set(spec.held_out) == {"renders",
                                                                                            "reconstructions"}
    judge = LearnedShotJudge.load(judge_file, vocab)
    assert "held out" in judge.name and spec.accuracy_text() in judge.name
    fresh = accuracy(judge, seed=7)  # pictures it never saw
    nobody = judge.judge([Image.fromarray(disc_image(np.random.default_rng(500 + i), None)) for i in range(20)])
    # negative control: the same file with shuffled weights knows nothing, and its name differs (the
    # report caches judgements by name, so a changed file must not reuse the old answers)
    control = LearnedShotJudge.load(shuffled_copy(judge_file, tmp_path / "shuffled.safetensors"), vocab)
    shuffled = accuracy(control, seed=7)
    assert fresh >= 0.85, fresh
    assert sum(g.shot_size is None for g in nobody) >= 15
    assert shuffled <= fresh - 0.3, (fresh, shuffled)
    assert control.name != judge.name


def _validation_output(root: Path, judge_seed: int = 3) -> tuple[Path, Path]:
    """A validation output folder as validation.sh leaves it: the trained column holds pictures of the
    shot each prompt asked for, the base column pictures of a long shot whatever was asked."""
    prompts = root / "validation.jsonl"
    run_front_door(REPO / "validation" / "make_validation_jsonl.py", "--output", prompts, "--shots", *SHOTS,
                   "--angles", "eye_level", "--locations", "indoor", "outdoor", "--subjects", "a woman",
                   "--seeds", 0, 1, check=True)
    records = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(judge_seed)
    out = root / "output"
    for column, shot_of in (("base", lambda r: "long"), ("train_proof", lambda r: r["shot_size"])):
        folder = out / column
        folder.mkdir(parents=True)
        rows = []
        for r in records:
            Image.fromarray(disc_image(rng, shot_of(r))).save(folder / f"{r['id']}.png")
            rows.append(json.dumps({"id": r["id"], "file": f"{r['id']}.png", "shot_size": r["shot_size"],
                                    "prompt": r["prompt"], "seed": r["seed"], "job_key": f"{column}-1"}))
        (folder / "images.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return prompts, out


def test_report_front_door_judges_with_the_file(judge_file, tmp_path):
    prompts, out = _validation_output(tmp_path)
    proc = run_front_door(REPORT, "--prompts", prompts, "--output-dir", out, "--judge", judge_file, check=True)
    fidelity = json.loads((out / "report" / "fidelity.json").read_text(encoding="utf-8"))
    spec = read_judge_file(judge_file, load_vocabulary())
    assert spec.accuracy_text() in fidelity["judge"] and spec.accuracy_text() in proc.stdout
    trained, base = fidelity["total"]["train_proof"], fidelity["total"]["base"]
    assert trained["n"] == base["n"] == 12
    assert trained["matched"] >= 10          # every picture shows the shot asked for
    assert base["matched"] <= 6              # every picture is a long shot: right only for the 4 long prompts
    # negative control: the shuffled file, same folder: judged again (new name), different figures
    shuffled = shuffled_copy(judge_file, tmp_path / "shuffled.safetensors")
    run_front_door(REPORT, "--prompts", prompts, "--output-dir", out, "--judge", shuffled, check=True)
    again = json.loads((out / "report" / "fidelity.json").read_text(encoding="utf-8"))
    assert again["judge"] != fidelity["judge"]
    assert again["total"]["train_proof"]["matched"] <= trained["matched"] - 4, again["total"]


def _bad_files(judge_file: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what its one-line error says)."""
    header_of = lambda path: json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    meta = json.loads(header_of(judge_file)["__metadata__"][METADATA_KEY])
    tensors = load_file(str(judge_file))

    def with_meta(name: str, change: dict) -> Path:
        path = tmp / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps({**meta, **change})})
        return path

    text = tmp / "notes.safetensors"
    text.write_text("not a judge at all\n", encoding="utf-8")
    bare = tmp / "bare.safetensors"
    save_file(tensors, str(bare))
    return {
        "missing": (tmp / "absent.safetensors", "no such file"),
        "text": (text, "not a safetensors file"),
        "no metadata": (bare, "no shot-judge metadata"),
        "unknown class": (with_meta("cls", {"classes": ["close_up", "walrus", "long", "nobody"]}), "classes"),
        "no accuracy": (with_meta("acc", {"held_out_accuracy": {}}), "held_out_accuracy"),
        "wrong width": (with_meta("width", {"width": 16}), "do not fit"),
    }


def test_bad_judge_files_are_one_line_errors(judge_file, tmp_path):
    prompts, out = _validation_output(tmp_path)
    for name, (path, says) in _bad_files(judge_file, tmp_path).items():
        proc = run_front_door(REPORT, "--prompts", prompts, "--output-dir", out, "--judge", path)
        assert_one_line_error(proc, "--judge", says), name
    proc = run_front_door(REPORT, "--prompts", prompts, "--output-dir", out, "--judge", judge_file,
                          "--clip-model", "ViT-B-32")
    assert_one_line_error(proc, "--judge and --clip-model")


def test_launchers_pass_judge_through(judge_file, tmp_path, tiny_models, trained_checkpoint):
    prompts, _ = _validation_output(tmp_path)
    base = {"BASE_MODEL": str(tiny_models / "model_sd"), "PROMPTS": str(prompts), "OUTPUT_DIR": str(tmp_path / "out"),
                "CHECKPOINT": str(trained_checkpoint)}
    for launcher in ("base_valid.sh", "validation.sh"):
        proc = run_command(["bash", REPO / "validation" / launcher],
                           env=user_env(JUDGE=str(tmp_path / "absent.safetensors"), **base))
        assert_one_line_error(proc, "--judge", "no such file")
    # control: the good file passes the same preflight (nothing loaded, nothing made)
    proc = run_front_door(REPO / "validation" / "run_validation.py", "--preflight", "--base-only", "--base-model",
                          tiny_models / "model_sd", "--prompts", prompts, "--judge", judge_file)
    assert proc.returncode == 0, proc.stderr
