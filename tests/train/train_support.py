"""Helpers for the training tests (tests/train/test_train_*.py): a tiny Dataset_fin, fast flags, and two
ways to run the trainer (in this process, or as a user does, through the front door)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from support import REPO, run_front_door

FRONT_DOOR = REPO / "train_trigger02.py"
LAUNCHER = REPO / "shot_trigger_train.sh"

# (token, words) pairs from the built-in vocabulary; the images differ per token so there is
# something to learn.
SHOTS = (("<fs_trg>", "full shot"), ("<cu_trg>", "close-up"))


def make_dataset(root: Path, n: int = 4, size: int = 64, shots=SHOTS, seed: int = 0) -> Path:
    """An imagefolder ``Dataset_fin``: ``images/*.png`` + ``metadata.jsonl`` (file_name, text with the
    trigger first). A full shot is a small figure in a big frame, a close-up a big face."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        token, words = shots[i % len(shots)]
        bg = tuple(int(v) for v in rng.integers(40, 215, 3))
        image = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(image)
        if i % len(shots) == 0:  # small full figure
            draw.ellipse((size * 0.42, size * 0.15, size * 0.58, size * 0.3), fill=(240, 200, 170))
            draw.rectangle((size * 0.4, size * 0.3, size * 0.6, size * 0.85), fill=(30, 30, 120))
        else:  # a face filling the frame
            draw.ellipse((size * 0.1, size * 0.05, size * 0.9, size * 1.0), fill=(240, 200, 170))
        name = f"images/{i:03d}.png"
        image.save(root / name)
        lines.append({"id": f"s{i}", "file_name": name, "text": f"{token}, {words}, eye level, outdoor, person {i}",
                      "shot_size": "full" if token == "<fs_trg>" else "close_up"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return root


def fast_flags(**overrides) -> list[str]:
    """Flags that keep a run to a few seconds on 2 CPU cores."""
    flags = {"resolution": 64, "train_batch_size": 2, "num_validation_images": 0, "eval_loss_images": 0,
             "dataloader_num_workers": 0, "max_train_steps": 4, "checkpointing_steps": 1000, "mixed_precision": "no"}
    flags.update(overrides)
    out = []
    for key, value in flags.items():
        if value is True:
            out.append(f"--{key}")
        elif value is False:
            out.append(f"--no-{key}")
        elif value is not None:
            out += [f"--{key}", str(value)]
    return out


def train_args(base: Path, data: Path, out: Path, *extra: str, **overrides) -> list[str]:
    return ["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data), "--output_dir", str(out),
            *fast_flags(**overrides), *extra]


def train_in_process(argv: list[str]) -> int:
    """Run the trainer here (one process): much faster than a subprocess in tests."""
    import torch

    from storyboard.train import run
    from storyboard.train.args import build_parser

    threads, progress = torch.get_num_threads(), os.environ.get("STORYBOARD_NO_PROGRESS")
    torch.set_num_threads(1)  # tiny models: one thread beats two on 2 shared cores
    os.environ["STORYBOARD_NO_PROGRESS"] = "1"
    try:
        return run(build_parser().parse_args(argv))
    finally:
        torch.set_num_threads(threads)
        if progress is None:
            os.environ.pop("STORYBOARD_NO_PROGRESS", None)
        else:
            os.environ["STORYBOARD_NO_PROGRESS"] = progress


def run_trainer(argv: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train_trigger02.py ARGV`` as a user runs it."""
    return run_front_door(FRONT_DOOR, *argv, cwd=cwd, timeout=timeout)


def load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def wandb_records(path: Path):
    """The records of a wandb run file (``run-<id>.wandb``), read with wandb's own protobuf schema. The
    file is a LevelDB-style log (github.com/google/leveldb, doc/log_format.md): a 7-byte header
    (``:W&B``, magic, version), then 32 KiB blocks of records, each framed by a 7-byte header (CRC,
    length, type: 1 full, 2 first, 3 middle, 4 last); a block's last < 7 bytes are padding."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:8]
    pos, parts = 7, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record
        elif kind == 0:
            parts = []


def wandb_history(path: Path) -> list[dict]:
    """The history rows (``run.log`` calls) of a wandb run file: ``{key: JSON-decoded value}``."""
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
