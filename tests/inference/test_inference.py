"""inference_trigger.py and storyboard.inference (prompts, pngmeta, pipeline, run): trigger rules, the
seed's command line, PNG metadata, same image as plain diffusers, and one-line errors for every mismatch."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from storyboard.artifacts.read import Checkpoint, read_checkpoint
from storyboard.core.cli import UserError
from storyboard.core.vocabulary import load_vocabulary
from storyboard.inference.pngmeta import (
    a1111_parameters,
    parse_parameters,
    png_bytes,
    read_png_metadata,
    read_png_parameters,
)
from storyboard.inference.prompts import plain_prompt, prepare_prompt

from support import REPO, run_command, user_env
from trigger_helpers import INFERENCE, copy_checkpoint, edit_manifest, pixels, seed_root

SEED_PROMPT = "<fs_trg>, full shot, Eye level, outdoor"
WEBUI_SEED_PROMPT = "fs_trg, full shot, Eye level, outdoor, <lora:train_fs:1>"  # the same for the WebUI's paste


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


@pytest.fixture
def fake_checkpoint(tmp_path) -> Checkpoint:
    """A checkpoint that trained <fs_trg> and <ms_trg> (no files needed for the prompt rules)."""
    return Checkpoint(path=tmp_path / "train_fs", name="train_fs", manifest={}, lora_file=None,
                      embeddings={"<fs_trg>": None, "<ms_trg>": None},
                      initializers={"<fs_trg>": "full shot", "<ms_trg>": "medium shot"},
                      text_encoder_dir=None, tokenizer_dir=None)


# --------------------------------------------------------------------------------------------
# Trigger insertion rules
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shot", ["full", "full shot", "풀샷", "풀 숏", "FS", "<fs_trg>"])
def test_shot_flag_puts_token_and_words_in_front(vocab, fake_checkpoint, shot):
    assert prepare_prompt("a man in a coat, outdoor", shot, vocab, fake_checkpoint) == \
        "<fs_trg>, full shot, a man in a coat, outdoor"


def test_shot_flag_does_not_repeat_words_the_prompt_has(vocab, fake_checkpoint):
    assert prepare_prompt("full shot of a man", "full", vocab, fake_checkpoint) == "<fs_trg>, full shot of a man"


def test_prompt_with_a_trigger_is_left_alone(vocab, fake_checkpoint):
    for prompt in (SEED_PROMPT, "a man, <ms_trg>, low angle"):
        assert prepare_prompt(prompt, None, vocab, fake_checkpoint) == prompt
    # --shot naming the same trigger changes nothing either
    assert prepare_prompt(SEED_PROMPT, "풀샷", vocab, fake_checkpoint) == SEED_PROMPT


def test_untrained_trigger_is_an_error_listing_the_trained_ones(vocab, fake_checkpoint):
    for prompt, shot in (("<cu_trg>, close-up, a man", None), ("a man", "클로즈업")):
        with pytest.raises(UserError) as err:
            prepare_prompt(prompt, shot, vocab, fake_checkpoint)
        message = str(err.value)
        assert "<cu_trg>" in message and "not trained" in message
        assert "<fs_trg> (full shot)" in message and "<ms_trg> (medium shot)" in message


def test_conflicting_shot_and_prompt_is_an_error(vocab, fake_checkpoint):
    with pytest.raises(UserError, match="already holds <fs_trg>"):
        prepare_prompt(SEED_PROMPT, "medium", vocab, fake_checkpoint)
    with pytest.raises(UserError, match="another shot size"):
        prepare_prompt("close-up of a face", "full", vocab, fake_checkpoint)
    with pytest.raises(UserError, match="unknown shot size"):
        prepare_prompt("a man", "wide-ish", vocab, fake_checkpoint)


def test_base_model_gets_plain_words(vocab):
    assert prepare_prompt(SEED_PROMPT, None, vocab, None) == "full shot, Eye level, outdoor"
    assert prepare_prompt("a man", "풀샷", vocab, None) == "full shot, a man"
    assert plain_prompt("<ms_trg>, a man, outdoor", vocab) == "medium shot, a man, outdoor"
    assert plain_prompt("<fs_trg>, full shot of a man", vocab) == "full shot of a man"


# --------------------------------------------------------------------------------------------
# PNG metadata
# --------------------------------------------------------------------------------------------
def _meta(**over):
    meta = {"prompt": "<fs_trg>, full shot, 남자, outdoor", "negative_prompt": "blurry, lowres", "steps": 30,
            "sampler": "DPM++ 2M Karras", "cfg_scale": 7.5, "seed": 1234, "width": 512, "height": 768,
            "model_hash": "0123456789", "model": "model_sd", "lora_hashes": {"train_fs": "abcdef012345"},
            "lora_scale": 0.8, "ti_hashes": {"fs_trg": "aaaaaaaaaaaa", "ms_trg": "bbbbbbbbbbbb"},
            "version": "storyboard-trigger 0.1.0"}
    meta.update(over)
    meta["parameters"] = a1111_parameters(meta)
    return meta


def test_parameters_text_is_the_webui_form_and_parses_back():
    meta = _meta()
    text = meta["parameters"]
    lines = text.split("\n")
    assert lines[0] == meta["prompt"] and lines[1] == "Negative prompt: blurry, lowres"
    assert lines[2].startswith("Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
                               "Model hash: 0123456789")
    back = parse_parameters(text)
    assert back["Prompt"] == meta["prompt"] and back["Negative prompt"] == "blurry, lowres"
    assert (back["Steps"], back["Seed"], back["Size-1"], back["Size-2"], back["CFG scale"]) == (
        "30", "1234", "512", "768", "7.5")
    assert back["Lora hashes"] == "train_fs: abcdef012345"
    assert back["TI hashes"] == "fs_trg: aaaaaaaaaaaa, ms_trg: bbbbbbbbbbbb"
    no_negative = parse_parameters(_meta(negative_prompt="")["parameters"])
    assert no_negative["Negative prompt"] == "" and no_negative["Prompt"] == meta["prompt"]


def test_png_carries_both_chunks(tmp_path):
    from PIL import Image

    meta = _meta()
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(Image.new("RGB", (8, 8), "red"), meta))
    assert read_png_parameters(path) == meta["parameters"]  # Korean text survives (iTXt)
    assert read_png_metadata(path) == json.loads(json.dumps(meta))


# --------------------------------------------------------------------------------------------
# The seed's command line, and the image it makes
# --------------------------------------------------------------------------------------------
def test_seed_command_line_verbatim(tmp_path, tiny_models, trained_checkpoint):
    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    proc = run_command([sys.executable, INFERENCE, "--base-model", "./model_sd", "--checkpoint",
                       "./model_sd_weight/train_fs", "--prompt", SEED_PROMPT, "--output", "./model_output/sample.png"],
                      cwd=root)
    assert proc.returncode == 0, proc.stderr
    png = root / "model_output" / "sample.png"
    params = parse_parameters(read_png_parameters(png))
    assert params["Prompt"] == WEBUI_SEED_PROMPT  # the WebUI's form; our exact prompt is in the sidecar
    assert (params["Steps"], params["Seed"], params["Size-1"], params["Size-2"]) == ("30", "0", "64", "64")  # native
    assert params["Lora hashes"].startswith("train_fs: ")
    assert params["TI hashes"].startswith("ms_trg: ") or params["TI hashes"].startswith("fs_trg: ")
    sidecar = [json.loads(line) for line in (root / "model_output" / "sample.jsonl").read_text().splitlines()]
    assert sidecar == [read_png_metadata(png)]
    assert sidecar[0]["file"] == "sample.png" and sidecar[0]["parameters"] == read_png_parameters(png)
    assert sidecar[0]["prompt"] == sidecar[0]["prompt_given"] == SEED_PROMPT


PLAIN_TOLERANCE = 2  # levels of 255: fusing changes float rounding only (measured 1; the controls 45 and 47)


def _plain_diffusers_image(base: Path, checkpoint: Path, prompt: str, seed: int):
    """The diffusers docs' recipe, written out here (not through our loader): the base, the LoRA file
    (unfused), one textual inversion per embedding file."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(checkpoint)
    for token in ("fs_trg", "ms_trg"):
        pipe.load_textual_inversion(str(checkpoint / "embeddings" / f"{token}.safetensors"), token=f"<{token}>")
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt, num_inference_steps=4, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image, dtype=np.int16)


def test_same_image_as_plain_diffusers_and_reproducible(tmp_path, tiny_models, trained_checkpoint, monkeypatch):
    """Our loader (LoRA fused) makes the image the plain diffusers recipe (LoRA unfused) makes with the
    same seed, and the settings in the PNG remake it. Negative controls: our loader with the LoRA not
    loaded, and with the LoRA fused at half its scale (a wrong alpha), each differ from plain diffusers
    by far more than the tolerance, so the comparison sees the LoRA."""
    from diffusers import StableDiffusionPipeline

    from storyboard.inference.jobs import Job, run_jobs
    from storyboard.inference.pipeline import load_trigger_pipeline
    from storyboard.inference.settings import Settings

    base, prompt = tiny_models / "model_sd", "<ms_trg>, medium shot, a man"
    settings = Settings(steps=4, guidance=5.0)

    def ours(name: str, lora_scale: float = 1.0) -> np.ndarray:
        tp = load_trigger_pipeline(base, trained_checkpoint, device="cpu", lora_scale=lora_scale)
        run_jobs(tp, [Job(prompt, "", 3, tmp_path / name)], replace(settings, lora_scale=lora_scale),
                 show_progress=False)
        return pixels(tmp_path / name)

    plain = _plain_diffusers_image(base, trained_checkpoint, prompt, seed=3)
    fused = ours("ours.png")
    assert np.abs(fused - plain).max() <= PLAIN_TOLERANCE
    half = ours("half_scale.png", lora_scale=0.5)
    with monkeypatch.context() as patch:  # the feature removed: the LoRA file is never loaded
        patch.setattr(StableDiffusionPipeline, "load_lora_weights", lambda self, *a, **k: None)
        no_lora = ours("no_lora.png")
    for control in (no_lora, half):
        diff = np.abs(control - plain)
        assert diff.max() > 5 * PLAIN_TOLERANCE and diff.mean() > 2, (diff.max(), diff.mean())

    # remake from the metadata alone: the settings as the WebUI reads them, our exact prompt from the JSON
    again = parse_parameters(read_png_parameters(tmp_path / "ours.png"))
    assert again["Seed"] == "3"
    s2 = Settings(steps=int(again["Steps"]), guidance=float(again["CFG scale"]),
                  width=int(again["Size-1"]), height=int(again["Size-2"]))
    prompt = read_png_metadata(tmp_path / "ours.png")["prompt"]  # our exact prompt, from the JSON chunk
    tp = load_trigger_pipeline(base, trained_checkpoint, device="cpu")
    run_jobs(tp, [Job(prompt, again["Negative prompt"], int(again["Seed"]), tmp_path / "again.png")], s2,
             show_progress=False)
    assert np.array_equal(fused, pixels(tmp_path / "again.png"))


def _front_door():
    import importlib.util

    spec = importlib.util.spec_from_file_location("inference_trigger", INFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shot_flag_num_images_and_folder_output(tmp_path, tiny_models, trained_checkpoint, monkeypatch):
    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    monkeypatch.chdir(root)
    assert _front_door().main(["--shot", "미디엄샷", "--prompt", "a man", "--num-images", "2", "--steps", "2",
                               "--seed", "5", "--output", "model_output/batch"]) == 0
    sidecar = [json.loads(line) for line in (root / "model_output/batch/images.jsonl").read_text().splitlines()]
    assert [(r["file"], r["seed"], r["prompt"]) for r in sidecar] == [
        ("0000-5.png", 5, "<ms_trg>, medium shot, a man"), ("0001-6.png", 6, "<ms_trg>, medium shot, a man")]


def test_bf16_on_the_cpu_makes_an_image_and_records_its_dtype(tmp_path, tiny_models, trained_checkpoint, monkeypatch):
    """CPU kernels run bf16 (diffusers and the fused LoRA included), so --dtype bf16 is allowed there; the
    image is a real picture (no NaN turned black) close to the fp32 one, and its PNG says bf16."""
    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    monkeypatch.chdir(root)
    for dtype in ("bf16", "fp32"):
        assert _front_door().main(["--prompt", SEED_PROMPT, "--steps", "2", "--device", "cpu", "--dtype", dtype,
                                   "--output", f"model_output/{dtype}.png"]) == 0
    meta = read_png_metadata(root / "model_output/bf16.png")
    assert meta["dtype"] == "bfloat16" and read_png_metadata(root / "model_output/fp32.png")["dtype"] == "float32"
    bf16, fp32 = pixels(root / "model_output/bf16.png"), pixels(root / "model_output/fp32.png")
    assert bf16.shape == (64, 64, 3) and bf16.std() > 5
    assert np.abs(bf16 - fp32).mean() < 8  # bf16 rounding, not another picture


def test_fp16_loads_and_fuses_on_the_cpu_before_moving_to_the_gpu(tiny_models, trained_checkpoint, monkeypatch):
    """On a GPU, --dtype auto is fp16 and load_trigger_pipeline loads, adds the token rows and fuses the
    LoRA on the CPU in fp16 before ``pipe.to(cuda)``: that half runs here (the CPU refuses fp16 only for
    making images), so a GPU session meets no dtype surprise there."""
    import torch

    from storyboard.inference import pipeline

    monkeypatch.setattr(pipeline, "resolve_dtype", lambda dtype, device: torch.float16)
    tp = pipeline.load_trigger_pipeline(tiny_models / "model_sd", trained_checkpoint, device="cpu", dtype="fp16")
    assert tp.fused and not tp.pipe.get_list_adapters()
    assert {tp.pipe.unet.dtype, tp.pipe.text_encoder.dtype, tp.pipe.vae.dtype} == {torch.float16}
    table = tp.pipe.text_encoder.get_input_embeddings().weight
    row = table[tp.pipe.tokenizer.convert_tokens_to_ids("<fs_trg>")]
    saved = _saved_embedding(trained_checkpoint, "fs_trg")
    assert table.dtype == torch.float16 and torch.equal(row, saved.to(torch.float16))
    assert all(torch.isfinite(p).all() for p in tp.pipe.unet.parameters())


def _saved_embedding(checkpoint: Path, stem: str):
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "embeddings" / f"{stem}.safetensors"))["emb_params"][0]


# --------------------------------------------------------------------------------------------
# Mismatches: one line, exit 2, no traceback
# --------------------------------------------------------------------------------------------
def _mismatch_cases(tmp_path: Path, tiny_models: Path, ckpt: Path) -> dict[str, tuple[list, str]]:
    other_base = tmp_path / "other_base"
    import shutil

    shutil.copytree(tiny_models / "model_sd", other_base)
    config = json.loads((other_base / "unet" / "config.json").read_text())
    config["sample_size"] = 16  # another model: the UNet's config differs
    (other_base / "unet" / "config.json").write_text(json.dumps(config))
    small_tok = copy_checkpoint(ckpt, tmp_path / "ckpt_tok")

    def shrink(manifest):
        manifest["base_model"]["tokenizer_size"] -= 1
        manifest["tokenizer_size"] -= 1

    edit_manifest(small_tok, shrink)
    base = str(tiny_models / "model_sd")
    return {
        "missing folder": (["--base-model", base, "--checkpoint", tmp_path / "nope"], "checkpoint folder not found"),
        "missing base": (["--base-model", tmp_path / "no_base", "--checkpoint", ckpt], "base model folder not found"),
        "bad size": (["--base-model", base, "--checkpoint", ckpt, "--width", 65],
                     "--width 65 is not a positive multiple of 8"),
        "base fingerprint": (["--base-model", other_base, "--checkpoint", ckpt], "base model mismatch"),
        "tokenizer size": (["--base-model", base, "--checkpoint", small_tok], "tokenizer size mismatch"),
        "untrained trigger": (["--base-model", base, "--checkpoint", ckpt, "--shot", "close-up"], "was not trained"),
        "not a checkpoint": (["--base-model", base, "--checkpoint", tmp_path], "is not a training output folder"),
        "fp16 on the cpu": (["--base-model", base, "--checkpoint", ckpt, "--device", "cpu", "--dtype", "fp16"],
                            "--dtype fp16 needs a GPU; on CPU use fp32 (or bf16)"),
    }


def test_mismatch_errors_are_one_line(tmp_path, tiny_models, trained_checkpoint):
    cases = _mismatch_cases(tmp_path, tiny_models, trained_checkpoint)
    for name, (args, expected) in cases.items():
        proc = run_command([sys.executable, INFERENCE, "--prompt", "a man", "--output", tmp_path / "o.png", *args],
                          cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (name, proc.stderr)
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert lines[0].startswith("inference_trigger.py: error: ") and expected in lines[0], (name, lines[0])
    assert not (tmp_path / "o.png").exists()


def test_read_checkpoint_lists_tokens_in_manifest_order(trained_checkpoint):
    ckpt = read_checkpoint(trained_checkpoint)
    assert sorted(ckpt.tokens) == ["<fs_trg>", "<ms_trg>"]
    assert ckpt.initializers["<fs_trg>"] == "full shot"
    assert ckpt.lora_file is not None and all(f.is_file() for f in ckpt.embeddings.values())


def test_launcher_variables_and_flags(tmp_path, tiny_models, trained_checkpoint):
    """inference_trigger2.sh: variables from the environment, flags passed last win."""

    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    env = user_env(PYTHON=sys.executable, SEED="7", STEPS="2", OUTPUT="model_output/launcher.png")
    proc = run_command(["bash", REPO / "inference_trigger2.sh", "--steps", "3"], cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    params = parse_parameters(read_png_parameters(root / "model_output" / "launcher.png"))
    assert (params["Prompt"], params["Seed"], params["Steps"]) == (WEBUI_SEED_PROMPT, "7", "3")


def test_a_checkpoint_trained_with_another_prediction_type_is_sampled_with_it(tiny_models, tmp_path):
    """A folder trained with ``--prediction_type v_prediction`` on an epsilon base is sampled as
    v-prediction without the user repeating the flag; the flag still wins when given."""
    from types import SimpleNamespace

    from storyboard.artifacts.read import Checkpoint
    from storyboard.inference.settings import base_from_args

    def checkpoint(prediction: str) -> Checkpoint:
        return Checkpoint(path=tmp_path / "train_v", name="train_v", lora_file=None, embeddings={}, initializers={},
                          manifest={"base_model": {"prediction_type": prediction}},
                          text_encoder_dir=None, tokenizer_dir=None)

    args = SimpleNamespace(base_model=tiny_models / "model_sd", base_config=None, prediction_type=None)
    assert base_from_args(args).prediction_type == "epsilon"  # control: the base's own
    trained = base_from_args(args, checkpoint("v_prediction"))
    assert trained.prediction_type == "v_prediction"
    assert "trigger_manifest.json" in trained.evidence["prediction"]
    assert base_from_args(args, checkpoint("epsilon")).prediction_type == "epsilon"
    args.prediction_type = "epsilon"  # the user's flag wins over the manifest
    assert base_from_args(args, checkpoint("v_prediction")).prediction_type == "epsilon"
