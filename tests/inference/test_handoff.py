"""PNGs a user can paste into the A1111 WebUI or drop on ComfyUI, and the trained folder's ComfyUI
workflow (storyboard.inference.handoff, pngmeta, storyboard.artifacts.comfyui): read back the way those
tools read them, and checked against the ComfyUI node signatures in artifacts/data/comfyui_nodes.json."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import struct
import sys
from pathlib import Path

import pytest

from storyboard.artifacts.comfyui import (
    api_workflow,
    check_api_workflow,
    check_ui_workflow,
    comfyui_prompt,
    node_table,
    ui_workflow,
)
from storyboard.artifacts.samplers import COMFYUI_SAMPLERS, comfyui_sampler
from storyboard.inference.pngmeta import parse_parameters, read_png_metadata, read_png_parameters, read_png_text
from storyboard.inference.settings import SCHEDULERS, Settings

from support import run_command
from trigger_helpers import INFERENCE, seed_root

# The WebUI's paste (extensions-builtin/Lora, infotext_pasted): the name in each <lora:NAME: tag is
# looked up in "Lora hashes"; a textual inversion is named by its file stem.
LORA_TAG = re.compile(r"<lora:([^:]+):([^>]+)>")


def addnet_hash(path: Path) -> str:
    """The WebUI's short LoRA hash: sha256 of a safetensors file's tensor data (after its header)."""
    data = path.read_bytes()
    (header,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header:]).hexdigest()[:12]


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_models, trained_checkpoint) -> dict:
    """One image from the seed's command line, plus the folder it was made in."""
    root = seed_root(tmp_path_factory.mktemp("handoff") / "seed", tiny_models, trained_checkpoint)
    proc = run_command([sys.executable, INFERENCE, "--prompt", "<fs_trg>, full shot, Eye level, outdoor",
                        "--negative-prompt", "blurry, lowres", "--lora-scale", "0.8", "--steps", "3", "--seed", "7",
                        "--output", "model_output/sample.png"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "png": root / "model_output" / "sample.png", "ckpt": trained_checkpoint}


# --------------------------------------------------------------------------------------------
# The A1111 WebUI
# --------------------------------------------------------------------------------------------
def test_pasted_parameters_apply_the_lora_and_the_embedding(made):
    """What the WebUI's paste finds: a <lora:NAME:SCALE> tag whose NAME.safetensors is the run-named
    file with the hash "Lora hashes" gives for NAME, and each trigger as an embedding file stem."""
    pasted = parse_parameters(read_png_parameters(made["png"]))
    assert pasted["Prompt"] == "fs_trg, full shot, Eye level, outdoor, <lora:train_fs:0.8>"
    assert pasted["Negative prompt"] == "blurry, lowres"
    assert (pasted["Steps"], pasted["Seed"], pasted["CFG scale"]) == ("3", "7", "7.5")
    assert (pasted["Size-1"], pasted["Size-2"]) == ("64", "64")
    [(name, scale)] = LORA_TAG.findall(pasted["Prompt"])
    hashes = dict(item.split(": ") for item in pasted["Lora hashes"].split(", "))
    lora_file = made["ckpt"] / f"{name}.safetensors"
    assert float(scale) == 0.8 and hashes[name] == addnet_hash(lora_file)
    ti = dict(item.split(": ") for item in pasted["TI hashes"].split(", "))
    words = {w.strip() for w in LORA_TAG.sub("", pasted["Prompt"]).split(",")}
    assert "fs_trg" in words and "<fs_trg>" not in pasted["Prompt"]
    for stem, short in ti.items():
        embedding = made["ckpt"] / "embeddings" / f"{stem}.safetensors"
        assert hashlib.sha256(embedding.read_bytes()).hexdigest()[:12] == short


def test_the_exact_diffusers_prompt_stays_in_the_sidecar(made):
    meta = read_png_metadata(made["png"])
    [line] = [json.loads(x) for x in (made["root"] / "model_output" / "sample.jsonl").read_text().splitlines()]
    assert meta["prompt"] == line["prompt"] == "<fs_trg>, full shot, Eye level, outdoor"
    assert line["webui_prompt"] == parse_parameters(line["parameters"])["Prompt"] != line["prompt"]


def test_parameters_parse_by_the_webuis_rules():
    text = ('a, b: c\nsecond line\nNegative prompt: x, y\nmore negative\n'
            'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1, Size: 512x768, '
            'Lora hashes: "train_fs: abcdef012345, other: 0123", Note: "say \\"hi\\""')
    got = parse_parameters(text)
    assert got["Prompt"] == "a, b: c\nsecond line" and got["Negative prompt"] == "x, y\nmore negative"
    assert (got["Size-1"], got["Size-2"]) == ("512", "768") and "Size" not in got
    assert got["Lora hashes"] == "train_fs: abcdef012345, other: 0123" and got["Note"] == 'say "hi"'
    # negative control: a last line with fewer than three pairs is part of the prompt, as in the WebUI
    short = parse_parameters("a man\nSteps: 30, Seed: 1")
    assert short["Prompt"] == "a man\nSteps: 30, Seed: 1" and "Steps" not in short


# --------------------------------------------------------------------------------------------
# ComfyUI
# --------------------------------------------------------------------------------------------
def test_training_output_has_a_comfyui_workflow_that_fits_the_node_table(trained_checkpoint):
    graph = json.loads((trained_checkpoint / "comfyui_workflow.json").read_text())
    assert check_api_workflow(graph) == []
    types = {node["class_type"] for node in graph.values()}
    assert types == {"CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "KSampler", "EmptyLatentImage",
                     "VAEDecode", "SaveImage"}
    lora = next(n for n in graph.values() if n["class_type"] == "LoraLoader")["inputs"]
    assert (trained_checkpoint / lora["lora_name"]).is_file() and lora["lora_name"] == "train_fs.safetensors"
    texts = [n["inputs"]["text"] for n in graph.values() if n["class_type"] == "CLIPTextEncode"]
    assert any(re.match(r"embedding:(fs|ms)_trg, ", t) for t in texts)
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")["inputs"]
    defaults = Settings()  # the inference defaults; the base's own sampler (PLMS) has ComfyUI's nearest
    assert (sampler["steps"], sampler["cfg"]) == (defaults.steps, defaults.guidance)
    assert (sampler["sampler_name"], sampler["scheduler"]) == comfyui_sampler("PLMS")


def test_the_check_finds_what_comfyui_would_refuse(trained_checkpoint):
    """Negative controls: each broken copy is reported."""
    graph = json.loads((trained_checkpoint / "comfyui_workflow.json").read_text())
    sampler_id = next(k for k, n in graph.items() if n["class_type"] == "KSampler")
    breakages = {
        "needs CONDITIONING but output 0 of CheckpointLoaderSimple is MODEL": ("positive", ["4", 0]),
        "not in the graph": ("latent_image", ["99", 0]),
        "not one of ComfyUI's samplers": ("sampler_name", "plms"),
        "outside [1, 10000]": ("steps", 0),
        "required, missing": ("denoise", None),
    }
    for expected, (name, value) in breakages.items():
        broken = copy.deepcopy(graph)
        if value is None:
            del broken[sampler_id]["inputs"][name]
        else:
            broken[sampler_id]["inputs"][name] = value
        problems = check_api_workflow(broken)
        assert any(expected in p for p in problems), (expected, problems)
    broken = copy.deepcopy(graph)
    broken[sampler_id]["class_type"] = "KSamplerTurbo"
    assert any("unknown type" in p for p in check_api_workflow(broken))


def test_each_png_carries_the_graph_comfyui_reads_on_drop(made):
    meta = read_png_metadata(made["png"])
    graph = json.loads(read_png_text(made["png"], "prompt"))
    workflow = json.loads(read_png_text(made["png"], "workflow"))
    assert check_api_workflow(graph) == [] and check_ui_workflow(workflow) == []
    inputs = {n["class_type"] + ("/neg" if n["_meta"]["title"] == "negative prompt" else ""): n["inputs"]
              for n in graph.values()}
    assert inputs["CLIPTextEncode"]["text"] == "embedding:fs_trg, full shot, Eye level, outdoor"
    assert inputs["CLIPTextEncode/neg"]["text"] == "blurry, lowres"
    assert (made["ckpt"] / inputs["LoraLoader"]["lora_name"]).is_file()
    assert inputs["LoraLoader"]["strength_model"] == inputs["LoraLoader"]["strength_clip"] == 0.8
    assert (inputs["KSampler"]["seed"], inputs["KSampler"]["steps"], inputs["KSampler"]["cfg"]) == (7, 3, 7.5)
    assert (inputs["EmptyLatentImage"]["width"], inputs["EmptyLatentImage"]["height"]) == (meta["width"], 64)
    assert inputs["CheckpointLoaderSimple"]["ckpt_name"] == "model_sd.safetensors"
    # the editor's form holds the same widget values, the seed followed by its "fixed" control
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"] == [7, "fixed", 3, 7.5, *comfyui_sampler(meta["sampler"]), 1.0]


def test_editor_form_check_catches_a_wrong_link_and_a_missing_widget(made):
    workflow = json.loads(read_png_text(made["png"], "workflow"))
    broken = copy.deepcopy(workflow)
    broken["links"][0][5] = "LATENT"
    assert any("output into" in p for p in check_ui_workflow(broken))
    broken = copy.deepcopy(workflow)
    next(n for n in broken["nodes"] if n["type"] == "KSampler")["widgets_values"].remove("fixed")
    assert any("widget values" in p for p in check_ui_workflow(broken))


def test_comfyui_embedding_words_and_sampler_names():
    stems = {"<fs_trg>": "fs_trg"}
    assert comfyui_prompt("<fs_trg>, full shot", stems) == "embedding:fs_trg, full shot"
    # ComfyUI finds "embedding:" only at the start or after a space, and reads up to a space or comma
    assert comfyui_prompt("a man,<fs_trg>)", stems) == "a man, embedding:fs_trg )"
    table = node_table()
    assert table["comfyui_version"] == "0.3.64"
    samplers, schedulers = table["choices"]["samplers"], table["choices"]["schedulers"]
    for _, _, label in SCHEDULERS.values():
        if label:
            sampler, scheduler = comfyui_sampler(label)
            assert label in COMFYUI_SAMPLERS and sampler in samplers and scheduler in schedulers, label


def test_bare_base_graph_has_no_lora_loader():
    from storyboard.artifacts.comfyui import WorkflowSettings

    graph = api_workflow(WorkflowSettings(ckpt_name="v1-5.safetensors", prompt="full shot, a man"))
    assert "LoraLoader" not in {n["class_type"] for n in graph.values()}
    assert check_ui_workflow(ui_workflow(graph)) == []
