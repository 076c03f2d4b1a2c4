"""Line art: every backend runs (the model ones on tiny weights through the libraries' real loaders,
never the Hub), the stage adds ``lineart_file`` in place and resumes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyboard.core.cli import UserError
from storyboard.core.records import load_jsonl
from storyboard.images.finalize import FinalizeSettings, finalize_dataset
from storyboard.images.lineart import LineartSettings, canny, record_seed, xdog
from storyboard.images.lineart_models import ModelBackend, load_detector
from storyboard.images.lineart_stage import lineart_name, run_lineart

from support import REPO, run_front_door

SCRIPT = REPO / "Data_preprocessing_Line" / "01_preprocessing.py"


@pytest.fixture(scope="module")
def lineart_models(tiny_models, tmp_path_factory) -> Path:
    """model_sdxl/, controlnet_lineart_sdxl/, annotators/: from the shared tiny models when
    storyboard.devkit.tiny builds them, else built here with the same builders."""
    from storyboard.devkit.tiny_lineart import BUILDERS

    if all((tiny_models / name).is_dir() for name in BUILDERS):
        return tiny_models
    out = tmp_path_factory.mktemp("tiny_lineart")
    for name, build in BUILDERS.items():
        build(out / name, 0)
    return out


@pytest.fixture(scope="module")
def dataset(sample_data, tmp_path_factory) -> Path:
    """A small finalized data set (3 sample images, 96 px squares), laid out like the seed's root."""
    root = tmp_path_factory.mktemp("lineart_root")
    truth = json.loads((sample_data / "ground_truth.json").read_text(encoding="utf-8"))
    lines = [json.dumps({"id": f"r{i}", "image": rel, "text": f"shot {i}", "keep_me": [i]}, ensure_ascii=False)
             for i, rel in enumerate(list(truth["images"])[:3])]
    (root / "meta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    finalize_dataset(root / "meta.jsonl", sample_data / "images", root / "Dataset_fin", FinalizeSettings(size=96))
    return root


def _copy(dataset: Path, tmp_path: Path) -> Path:
    shutil.copytree(dataset, tmp_path / "root")
    return tmp_path / "root"


def test_xdog_and_canny_draw_dark_lines_on_white_at_edges_only():
    image = np.full((128, 128, 3), 230, np.uint8)
    image[32:96, 32:96] = (40, 60, 200)
    for lines in (xdog(image), canny(image)):
        assert lines.dtype == np.uint8 and lines.shape == (128, 128)
        assert lines[5, 5] == 255 and lines[64, 64] == 255  # flat areas stay white
        assert lines[28:36, 60].min() < 100  # the square's top edge is a dark line


def test_the_front_door_with_the_seed_layout_rewrites_metadata_and_resumes(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    line_dir = root / "Data_preprocessing_Line"
    line_dir.mkdir()
    before = load_jsonl(root / "Dataset_fin" / "metadata.jsonl")

    def run(*args):
        proc = run_front_door(SCRIPT, *args, cwd=line_dir)
        assert proc.returncode == 0, proc.stderr
        return json.loads((root / "Dataset_fin" / "lineart" / "run.json").read_text())["summary"]["extra"]

    assert run("--backend", "xdog", "--workers", "2")["line art made"] == 3
    after = load_jsonl(root / "Dataset_fin" / "metadata.jsonl")
    assert len(after) == len(before)
    for old, new in zip(before, after):
        assert {k: new[k] for k in old} == old and new["lineart_backend"] == "xdog"
        with Image.open(root / "Dataset_fin" / new["lineart_file"]) as image:
            assert image.size == (96, 96) and image.mode == "L"
    assert run("--backend", "xdog")["line art reused (resume)"] == 3
    assert run("--backend", "canny")["line art made"] == 3  # other settings: made again


def test_missing_model_folders_are_one_line_errors(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    (root / "Data_preprocessing_Line").mkdir()
    proc = run_front_door(SCRIPT, cwd=root / "Data_preprocessing_Line", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--annotators ../annotators: not a folder" in proc.stderr and "xdog" in proc.stderr


def test_annotators_load_locally_and_never_ask_the_hub(lineart_models, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError(f"the Hub was asked for {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    import controlnet_aux.lineart
    import controlnet_aux.lineart_anime

    monkeypatch.setattr(controlnet_aux.lineart, "hf_hub_download", no_hub)
    monkeypatch.setattr(controlnet_aux.lineart_anime, "hf_hub_download", no_hub)
    for kind in ("lineart", "lineart_anime"):
        detector = load_detector(kind, lineart_models / "annotators")
        out = np.asarray(detector(np.full((64, 64, 3), 128, np.uint8), detect_resolution=64, image_resolution=64,
                                  output_type="np"))
        assert out.shape[:2] == (64, 64)
    with pytest.raises(UserError):
        load_detector("lineart", lineart_models / "model_sdxl")  # a folder without the weights
    import torch

    for name in ("sk_model.pth", "sk_model2.pth", "netG.pth"):  # plain tensors: the safe loader reads them
        state = torch.load(lineart_models / "annotators" / name, map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize("backend", ["lineart", "lineart_anime"])
def test_annotator_backends_run_through_the_stage(backend, lineart_models, dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    data = root / "Dataset_fin"
    settings = LineartSettings(backend=backend, annotators=str(lineart_models / "annotators"), detect_resolution=64,
                               size=64)
    stage = run_lineart(data / "metadata.jsonl", data, data / "metadata.jsonl", settings)
    assert stage.written == 3 and stage.extra["line art made"] == 3
    for record in load_jsonl(data / "metadata.jsonl"):
        with Image.open(data / record["lineart_file"]) as image:
            assert image.size == (64, 64)


def test_sdxl_controlnet_backend_on_the_tiny_models(lineart_models, dataset, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    # The folders are what the real loaders read (what a user passes as --base-model / --controlnet).
    controlnet = ControlNetModel.from_pretrained(lineart_models / "controlnet_lineart_sdxl")
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(lineart_models / "model_sdxl", controlnet=controlnet)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.tokenizer("full shot").input_ids == pipe.tokenizer_2("full shot").input_ids

    root = _copy(dataset, tmp_path)
    data = root / "Dataset_fin"
    settings = LineartSettings(backend="sdxl-controlnet", annotators=str(lineart_models / "annotators"),
                               base_model=str(lineart_models / "model_sdxl"),
                               controlnet=str(lineart_models / "controlnet_lineart_sdxl"),
                               detect_resolution=64, size=64, steps=2, batch_size=2, seed=7)
    stage = run_lineart(data / "metadata.jsonl", data, data / "metadata.jsonl", settings)
    assert stage.extra["line art made"] == 3
    records = load_jsonl(data / "metadata.jsonl")
    for record in records:
        assert record["lineart_seed"] == record_seed(7, record["id"])
        with Image.open(data / record["lineart_file"]) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    # A record's picture does not depend on its batch: the same seed alone gives the same pixels.
    alone = ModelBackend(LineartSettings(**{**settings.__dict__, "detector": "xdog"}))
    square = np.asarray(Image.open(data / records[1]["file_name"]).convert("RGB").resize((64, 64)))
    first = alone.run([square, square[::-1]], 64, [11, 12])[0]
    single = alone.run([square], 64, [11])[0]
    assert np.abs(first.astype(int) - single.astype(int)).max() <= 2


def test_dtype_spellings_keep_resume_keys():
    """--dtype takes fp16 (one spelling everywhere) and still float16: the resume key is the one earlier
    runs wrote with float16, so their line art is reused, and another precision is another key."""
    def key(dtype: str) -> str:
        return LineartSettings(backend="sdxl-controlnet", dtype=dtype).key()

    assert key("fp16") == key("float16") and key("bf16") == key("bfloat16") and key("fp32") == key("float32")
    assert len({key("fp16"), key("bf16"), key("fp32"), key("auto")}) == 4


def test_names():
    assert lineart_name("images/장면_1-ab.png") == "장면_1-ab"
    assert lineart_name("other/dir/x.jpg") == "other__dir__x"
    assert record_seed(0, "a") == record_seed(0, "a") != record_seed(1, "a")


def test_contact_sheet_shows_the_four_stages(dataset, sample_data, tmp_path):
    root = _copy(dataset, tmp_path)
    data = root / "Dataset_fin"
    run_lineart(data / "metadata.jsonl", data, data / "metadata.jsonl", LineartSettings(backend="xdog"))
    line_dir = root / "Data_preprocessing_Line"
    line_dir.mkdir()
    proc = run_front_door(REPO / "Data_preprocessing_Line" / "contact_sheet.py",
                          "--image-root", sample_data / "images", "--count", 2, cwd=line_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with Image.open(data / "contact_sheet.png") as sheet:
        assert sheet.size == (4 * 256, 24 + 2 * 256)
    page = (data / "contact_sheet.html").read_text(encoding="utf-8")
    assert page.count("<tr>") == 3 and "bubble mask" in page and 'class="missing"' not in page
    thumbs = sorted((data / "contact_sheet_files").glob("*.jpg"))
    assert len(thumbs) == 8


def test_sdxl_controlnet_on_a_single_file_base(lineart_models, tiny_models, dataset, tmp_path):
    """--base-model may be one SDXL checkpoint file (the WebUI's form): the same line art as its folder;
    an SD 1.x file is refused in one line before anything loads."""
    from storyboard.devkit.single_file import write_single_file

    base_file = write_single_file(lineart_models / "model_sdxl", tmp_path / "sdxl-tiny.safetensors")
    pictures = {}
    for name, base, config in (("folder", lineart_models / "model_sdxl", None),
                               ("file", base_file, lineart_models / "model_sdxl")):
        data = _copy(dataset, tmp_path / name) / "Dataset_fin"
        settings = LineartSettings(backend="sdxl-controlnet", detector="xdog", base_model=str(base),
                                   base_config=str(config) if config else None,
                                   controlnet=str(lineart_models / "controlnet_lineart_sdxl"), size=64, steps=2,
                                   batch_size=3, seed=7)
        assert run_lineart(data / "metadata.jsonl", data, data / "metadata.jsonl", settings).extra["line art made"] == 3
        pictures[name] = [np.asarray(Image.open(data / r["lineart_file"]), np.int16)
                          for r in load_jsonl(data / "metadata.jsonl")]
    for ours, theirs in zip(pictures["file"], pictures["folder"]):
        assert np.abs(ours - theirs).max() <= 1  # float rounding only (SDXL's pooled projection)
    sd1 = write_single_file(tiny_models / "model_sd", tmp_path / "sd1.safetensors")
    proc = run_front_door(SCRIPT, "--backend", "sdxl-controlnet", "--detector", "xdog", "--base-model", sd1,
                          "--data-dir", tmp_path / "file" / "root" / "Dataset_fin", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is an SD 1.x model; this step runs SDXL" in proc.stderr.strip().splitlines()[-1]
