"""What the engine's tests share: a finalize input from the sample data, comparing output folders, and
the environment that keeps every Ray process of a test on 127.0.0.1."""
from __future__ import annotations

import json
import socket
from pathlib import Path

from support import REPO, user_env

FINALIZE = REPO / "Data_preprocessing_method" / "03_finalize_dataset.py"
LINEART = REPO / "Data_preprocessing_Line" / "01_preprocessing.py"
CLUSTERING = REPO / "Dataset_clustering_method" / "run_clip_clustering.py"
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray then binds and connects on 127.0.0.1 only


def ray_env(**extra: str) -> dict[str, str]:
    """A user's environment for a front door that joins a test cluster: loopback only, and no
    RAY_ADDRESS from the developer's shell unless the test sets one."""
    env = user_env(**LOOPBACK, **extra)
    if "RAY_ADDRESS" not in extra:
        env.pop("RAY_ADDRESS", None)
    return env


def write_finalize_input(sample_data: Path, path: Path, limit: int | None = None) -> int:
    """Translated records for the sample images plus a record whose image is missing (a worker's
    reject) and a duplicate (a planning reject); returns how many records reach the workers."""
    truth = json.loads((sample_data / "ground_truth.json").read_text(encoding="utf-8"))
    images = list(truth["images"])[:limit]
    lines = [json.dumps({"id": f"still-{i:03d}" if i % 3 else f"장면 {i}", "image": rel, "text": f"shot {i}",
                         "keep": {"n": i}}, ensure_ascii=False) for i, rel in enumerate(images)]
    lines += [json.dumps({"id": "gone", "image": "no/such.png", "text": "x"}),
              json.dumps({"id": "still-001", "image": images[1], "text": "again"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(images) + 1


def folder_bytes(folder: Path, skip: tuple[str, ...] = ("run.json",)) -> dict[str, bytes]:
    """Every file of an output folder (relative name -> bytes) but the run records, which hold times."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip and "gallery" not in p.parts}


def run_info(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
