"""The tiny models load through the libraries' own loaders, match the real tokenizer, and rebuild safely."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from storyboard.core.cli import UserError, run_main
from storyboard.core.clip_tokenizer import clip_bpe_vocab_path
from storyboard.devkit.tiny import (
    BUILDERS,
    MARKER,
    TINY_CLIP_CFG,
    TINY_CLIP_NAME,
    TinyModel,
    build_all,
    main,
    read_marker,
)

PROMPTS = [
    "full shot, eye level, outdoor, a man walks along the river",
    "close-up of a woman's face, low angle",
    "풀샷, 아이레벨, 실외, 강을 따라 걷는 남자",
    "extreme long shot!!! city at night 2024",
    "  Medium   SHOT;  (two people) -- talking... \u00e9t\u00e9 caf\u00e9",
]
EOT = 49407


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# --------------------------------------------------------------------------------------------
# Stable Diffusion folder
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_pipe(tiny_models):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "model_sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sd_folder_has_sd15_layout(tiny_models, sd_pipe):
    folder = tiny_models / "model_sd"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        assert (folder / sub).is_dir(), sub
    assert (folder / "model_index.json").is_file()
    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert sd_pipe.safety_checker is None
    assert sd_pipe.vae_scale_factor == 8
    assert sd_pipe.unet.config.sample_size == 8
    assert sd_pipe.text_encoder.config.vocab_size == 49408 == len(sd_pipe.tokenizer)
    assert sd_pipe.tokenizer.model_max_length == 77
    sched = sd_pipe.scheduler.config
    assert type(sd_pipe.scheduler).__name__ == "PNDMScheduler"
    assert (sched.prediction_type, sched.beta_schedule, sched.num_train_timesteps) == ("epsilon", "scaled_linear", 1000)
    assert (sched.beta_start, sched.beta_end) == (0.00085, 0.012)


def test_sd_generates_deterministic_64px_images(sd_pipe):
    def generate(steps: int):
        generator = torch.Generator("cpu").manual_seed(1234)
        out = sd_pipe("full shot, eye level, a man walks", num_inference_steps=steps, height=64, width=64,
                      generator=generator)
        return out.images[0], None

    image, _ = generate(4)
    assert image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.std() > 0, "tiny model produced a constant image"
    again, _ = generate(4)
    assert np.array_equal(pixels, np.asarray(again))
    assert generate(2)[0].size == (64, 64)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_sd_tokenizer_matches_open_clip(tiny_models, prompt):
    import open_clip
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models / "model_sd", subfolder="tokenizer")
    ours = tokenizer(prompt, padding="max_length", max_length=77).input_ids
    theirs = open_clip.tokenize([prompt])[0].tolist()
    assert len(ours) == len(theirs) == 77
    # SD pads with EOT, open_clip with 0: compare up to and including the first EOT.
    assert EOT in ours and EOT in theirs
    assert ours[: ours.index(EOT) + 1] == theirs[: theirs.index(EOT) + 1]
    assert ours[0] == 49406


def test_clip_bpe_vocab_path_exists():
    path = clip_bpe_vocab_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.is_file()


# --------------------------------------------------------------------------------------------
# open_clip model
# --------------------------------------------------------------------------------------------
def _check_open_clip(model, preprocess, tokenizer, saved: dict):
    from PIL import Image

    loaded = model.state_dict()
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    model.eval()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    with torch.no_grad():
        image_features = model.encode_image(preprocess(image).unsqueeze(0))
        text_features = model.encode_text(tokenizer(PROMPTS[:3]))
    dim = TINY_CLIP_CFG["embed_dim"]
    assert image_features.shape == (1, dim) and text_features.shape == (3, dim)
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()
    assert tokenizer.context_length == 77


def test_open_clip_local_dir_form(tiny_models):
    import open_clip
    from safetensors.torch import load_file

    source = f"local-dir:{tiny_models / 'clip'}"
    model, _, preprocess = open_clip.create_model_and_transforms(source)
    tokenizer = open_clip.get_tokenizer(source)
    _check_open_clip(model, preprocess, tokenizer, load_file(tiny_models / "clip" / "open_clip_model.safetensors"))
    assert tokenizer(PROMPTS[:1]).tolist() == open_clip.tokenize(PROMPTS[:1]).tolist()


def test_open_clip_config_and_checkpoint_form(tiny_models):
    import open_clip
    from safetensors.torch import load_file

    folder = tiny_models / "clip"
    open_clip.add_model_config(folder / f"{TINY_CLIP_NAME}.json")
    assert TINY_CLIP_NAME in open_clip.list_models()
    checkpoint = folder / f"{TINY_CLIP_NAME}.safetensors"
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP_NAME, pretrained=str(checkpoint))
    saved = load_file(checkpoint)
    _check_open_clip(model, preprocess, open_clip.get_tokenizer(TINY_CLIP_NAME), saved)
    # Both forms hold the same weights.
    other = load_file(folder / "open_clip_model.safetensors")
    assert all(torch.equal(saved[k], other[k]) for k in saved)


# --------------------------------------------------------------------------------------------
# Building: skip, force, determinism, safety
# --------------------------------------------------------------------------------------------
def test_second_build_reuses_and_touches_nothing(tiny_models, capsys):
    before = _stamps(tiny_models)
    results = build_all(tiny_models, seed=0)
    assert [r.built for r in results] == [False] * len(BUILDERS)
    assert main(["--out", str(tiny_models)]) == 0
    assert capsys.readouterr().out.count("already built") == len(BUILDERS)
    assert _stamps(tiny_models) == before
    for name in BUILDERS:
        assert read_marker(tiny_models / name)["seed"] == 0


def test_builds_are_deterministic_by_seed(tiny_models, tmp_path):
    build_all(tmp_path, seed=0)
    for name in BUILDERS:
        assert _files(tmp_path / name) == _files(tiny_models / name), name
    build_all(tmp_path, seed=1, only=["clip"])  # a different seed rebuilds without --force
    assert read_marker(tmp_path / "clip")["seed"] == 1
    assert _files(tmp_path / "clip") != _files(tiny_models / "clip")


def test_force_rebuilds_and_leaves_no_temp_folders(tmp_path):
    build_all(tmp_path, only=["clip"])
    marker = tmp_path / "clip" / MARKER
    first = marker.stat().st_mtime_ns
    time.sleep(0.01)
    [result] = build_all(tmp_path, only=["clip"], force=True)
    assert result.built and marker.stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


def test_failed_build_leaves_no_half_folder(tmp_path, monkeypatch):
    def broken(folder: Path, seed: int) -> Path:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    monkeypatch.setitem(BUILDERS, "broken", TinyModel(broken, 1, "fails halfway"))
    with pytest.raises(RuntimeError, match="boom"):
        build_all(tmp_path, only=["broken"])
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_it_did_not_build(tmp_path, capsys):
    real = tmp_path / "model_sd"
    real.mkdir()
    (real / "model_index.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        run_main(main, ["--out", str(tmp_path), "--only", "model_sd", "--force"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "not built by storyboard.devkit.tiny" in err and "\n" not in err
    assert (real / "model_index.json").read_text() == "{}"


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown tiny model"):
        build_all(tmp_path, only=["nope"])
