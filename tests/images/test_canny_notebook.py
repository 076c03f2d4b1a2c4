"""Data_preprocessing_method/00_Canny.ipynb, run top to bottom with nbclient as a user opens it from the
clone (in its own folder), on a Dataset_fin that 03_finalize_dataset.py made from the sample data.

Parameters are set the way papermill does it: a cell inserted after the one tagged ``parameters``.
The notebook prints one JSON line per record it showed; the tests recompute those numbers from the
files, and change a parameter to see that the output follows it."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from support import REPO, read_jsonl, run_front_door

NOTEBOOK = REPO / "Data_preprocessing_method" / "00_Canny.ipynb"
FINALIZE = REPO / "Data_preprocessing_method" / "03_finalize_dataset.py"
TIMEOUT = 300  # seconds per cell; the whole notebook takes a few seconds on the sample data


@pytest.fixture(scope="module")
def dataset_fin(sample_data, tmp_path_factory) -> Path:
    """03 run on 12 of the sample images (about half with bubbles), as a user runs it."""
    root = tmp_path_factory.mktemp("canny_notebook")
    truth = json.loads((sample_data / "ground_truth.json").read_text(encoding="utf-8"))
    names = sorted(truth["images"])[:12]
    lines = [json.dumps({"id": f"rec-{i:02d}", "image": rel, "text": "a shot"}, ensure_ascii=False)
             for i, rel in enumerate(names)]
    (root / "metadata_translated.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_front_door(FINALIZE, "--image-root", sample_data / "images", "--metadata", "metadata_translated.jsonl",
                   "--out", root / "Dataset_fin", "--workers", "1", cwd=root, check=True)
    return root / "Dataset_fin"


def run_notebook(**params) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [at] = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def shown(nb) -> list[dict]:
    """The JSON lines the last cell printed."""
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def edges_of(path: Path, low: int, high: int, blur: float) -> int:
    gray = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
    return int((cv2.Canny(cv2.GaussianBlur(gray, (0, 0), blur), low, high) > 0).sum())


def test_notebook_shows_each_records_mask_square_and_edges(dataset_fin):
    records = {r["id"]: r for r in read_jsonl(dataset_fin / "metadata.jsonl")}
    with_bubbles = [i for i, r in records.items() if r["bubbles"]]
    without = [i for i, r in records.items() if not r["bubbles"]]
    assert with_bubbles and without
    ids = [with_bubbles[0], without[0], with_bubbles[-1]]
    nb = run_notebook(DATA_DIR=str(dataset_fin), RECORD_IDS=ids, CANNY_LOW=50, CANNY_HIGH=150, CANNY_BLUR=1.0)
    assert figures(nb) == 1
    rows = shown(nb)
    assert [r["id"] for r in rows] == ids
    for row in rows:
        record = records[row["id"]]
        mask = cv2.imread(str(dataset_fin / record["bubble_mask_file"]), cv2.IMREAD_GRAYSCALE)
        assert row["mask_pixels"] == int((mask > 0).sum())
        assert row["edge_pixels"] == edges_of(dataset_fin / record["file_name"], 50, 150, 1.0) > 0
        assert row["bubbles"] == len(record["bubbles"])
    assert rows[0]["mask_pixels"] > 0 and rows[1]["mask_pixels"] == 0


def test_notebook_follows_its_parameters(dataset_fin):
    """A pick of RECORDS records, half with bubbles; higher Canny thresholds give fewer edges; bubbles
    found again with the default settings are the stored mask, with impossible settings none."""
    common = {"DATA_DIR": str(dataset_fin), "RECORDS": 4, "SEED": 1}
    same = shown(run_notebook(**common, CANNY_LOW=50, CANNY_HIGH=150, BUBBLE_SETTINGS={"work_side": 1600}))
    assert len(same) == 4 and sum(r["bubbles"] > 0 for r in same) == 2
    assert all(r["mask_pixels_again"] == r["mask_pixels"] for r in same)
    other = shown(run_notebook(**common, CANNY_LOW=200, CANNY_HIGH=400, BUBBLE_SETTINGS={"min_text_parts": 10_000}))
    assert [r["id"] for r in other] == [r["id"] for r in same]
    assert all(o["edge_pixels"] < s["edge_pixels"] for o, s in zip(other, same))
    assert all(r["mask_pixels_again"] == 0 for r in other) and any(r["mask_pixels"] > 0 for r in other)


def test_notebook_without_a_dataset_says_what_to_run(tmp_path):
    with pytest.raises(CellExecutionError, match="run 03_finalize_dataset.py first"):
        run_notebook(DATA_DIR=str(tmp_path / "nowhere"))


def test_notebook_is_committed_without_outputs():
    """Outputs would hold pictures of whoever ran it last; the test runs it fresh every time."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in code)
    assert not any("devkit" in cell.source for cell in code)  # the product only: a user has no devkit data
    assert [c.metadata.get("tags") for c in code].count(["parameters"]) == 1
