"""Training on a base given as one checkpoint file (the WebUI / ComfyUI form): the run records the
file's fingerprint, its output loads on that file and is refused on another base; bad single files
are one line."""
from __future__ import annotations

import hashlib
import json

import pytest

from storyboard.devkit.single_file import write_single_file

from support import REPO, assert_one_line_error, read_jsonl, run_front_door
from train_support import fast_flags, make_dataset, run_trainer, train_args, train_in_process

INFERENCE = REPO / "inference_trigger.py"


@pytest.fixture(scope="module")
def file_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("single_file_train")
    base = write_single_file(tiny_models / "model_sd", root / "tiny-v1-5.safetensors")
    data = make_dataset(root / "Dataset_fin", n=4)
    out = root / "train_fs"
    argv = train_args(base, data, out, "--base_config", str(tiny_models / "model_sd"), max_train_steps=2)
    assert train_in_process(argv) == 0
    return {"root": root, "base": base, "out": out, "config": tiny_models / "model_sd"}


def test_the_manifest_records_the_files_fingerprint(file_run):
    manifest = json.loads((file_run["out"] / "trigger_manifest.json").read_text(encoding="utf-8"))
    base = manifest["base_model"]
    assert base["fingerprint"] == "sha256:" + hashlib.sha256(file_run["base"].read_bytes()).hexdigest()
    assert (base["format"], base["family"], base["path"]) == ("single_file", "sd1", str(file_run["base"]))
    assert base["config"] == str(file_run["config"])
    assert "cond_stage_model.transformer" in base["detected_from"]["family"]
    assert manifest["reload_check"]["ok"], manifest["reload_check"]["problems"]


def test_inference_runs_on_the_file_and_refuses_the_folder(file_run, tiny_models):
    root, out = file_run["root"], file_run["out"]
    proc = run_front_door(INFERENCE, "--base-model", file_run["base"], "--base-config", file_run["config"],
                          "--checkpoint", out, "--prompt", "<fs_trg>, a man", "--steps", "2",
                          "--output", root / "a.png", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "single file, SD 1.x (detected from cond_stage_model.transformer.*" in proc.stderr
    [meta] = read_jsonl(root / "a.jsonl")
    assert meta["model"] == "tiny-v1-5"  # the WebUI names a checkpoint by its file stem
    assert meta["model_hash"] == hashlib.sha256(file_run["base"].read_bytes()).hexdigest()[:10]  # its "Model hash"
    # Negative control: the same weights as a folder are another base for the fingerprint check.
    proc = run_front_door(INFERENCE, "--base-model", tiny_models / "model_sd", "--checkpoint", out,
                          "--prompt", "<fs_trg>, a man", "--steps", "2", "--output", root / "b.png", cwd=root)
    assert_one_line_error(proc, "base model mismatch")


def test_bad_single_file_bases_are_one_line(tiny_models, tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    sdxl = write_single_file(tiny_models / "model_sdxl", tmp_path / "xl.safetensors")
    tiny = write_single_file(tiny_models / "model_sd", tmp_path / "tiny.safetensors")
    text = tmp_path / "model.txt"
    text.write_text("x")
    cases = [
        ([sdxl], "is an SDXL model; this step runs SD 1.x / SD 2.x"),
        ([tiny], "UNet width is 32, the storyboard:sd15 configuration's 320"),
        ([text], "a base model is a diffusers folder or one .safetensors / .ckpt / .pt / .pth checkpoint"),
        ([tiny, "--base_config", tiny_models / "model_sdxl"], "describes an SDXL model"),
        ([tiny_models / "model_sd", "--base_config", tiny_models / "model_sd"], "--base_config is for a single-file"),
    ]
    for (base, *extra), fragment in cases:
        proc = run_trainer(["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data),
                            "--output_dir", str(tmp_path / "out"), *fast_flags(), *map(str, extra)], cwd=tmp_path)
        assert_one_line_error(proc, fragment)
    assert not (tmp_path / "out").exists()
