"""A base model given as one checkpoint file (.safetensors / .ckpt): detected, loaded offline through
diffusers' from_single_file with our configurations, and drawing the same images as its folder."""
from __future__ import annotations

import argparse
import hashlib
import json
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from storyboard.artifacts.base_file import FileKeys, detect_family, detect_prediction, read_file_keys
from storyboard.artifacts.base_load import load_base_pipeline
from storyboard.artifacts.base_model import base_fingerprint, resolve_base
from storyboard.core.cli import UserError
from storyboard.devkit.single_file import write_single_file

from base_helpers import TINY
from support import REPO, assert_one_line_error, run_front_door

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _image(pipe, steps: int = 3) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a man walking, full shot", num_inference_steps=steps, width=64, height=64, output_type="np",
                generator=torch.Generator("cpu").manual_seed(0)).images[0]


def _same_weights(a, b) -> list[str]:
    """Names of the tensors that differ between two pipelines (every component, every tensor)."""
    differ = []
    for part in PARTS:
        if getattr(a, part, None) is None:
            continue
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        differ += [f"{part}.{k}" for k in sa if sb[k].is_meta or not torch.equal(sa[k], sb[k])]
    return differ


def _perturbed(path, tmp_path):
    """The same file with one UNet bias changed: a different model."""
    state = load_file(str(path))
    state["model.diffusion_model.out.2.bias"] = state["model.diffusion_model.out.2.bias"] + 0.5
    out = tmp_path / f"perturbed-{path.name}"
    save_file(state, str(out))
    return out


# --------------------------------------------------------------------------------------------
# The same model as a folder and as one file
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TINY))
def test_single_file_draws_the_folders_images(name, tiny_models, single_files, tiny_shipped_configs, tmp_path):
    family, config, prediction = TINY[name]
    base = resolve_base(single_files[name], prediction_type=prediction, families=(family,))
    assert (base.format, base.family, base.shipped_config) == ("single_file", family, config)
    folder = resolve_base(tiny_models / name, families=(family,))
    from_file, from_folder = load_base_pipeline(base), load_base_pipeline(folder)

    assert _same_weights(from_file, from_folder) == []
    assert from_file.tokenizer.pad_token == from_folder.tokenizer.pad_token  # "!" for SD 2.x's OpenCLIP
    assert type(from_file.scheduler) is type(from_folder.scheduler)
    for key, value in from_folder.scheduler.config.items():  # ours may name unused keys the folder leaves out
        assert key.startswith("_") or from_file.scheduler.config[key] == value, key
    ours, theirs = _image(from_file), _image(from_folder)
    # Equal up to float rounding (SDXL's pooled projection lands at another memory alignment: ~1e-6).
    assert np.abs(ours - theirs).max() <= 1e-5

    # Negative control: a file that differs in one tensor is caught by both comparisons.
    other = load_base_pipeline(resolve_base(_perturbed(single_files[name], tmp_path), prediction_type=prediction,
                                            families=(family,)))
    assert _same_weights(other, from_folder) == ["unet.conv_out.bias"]
    assert np.abs(_image(other) - theirs).max() > 1e-3


def test_base_config_folder_is_taken_as_given(tiny_models, single_files):
    base = resolve_base(single_files["model_sd"], config=tiny_models / "model_sd")
    assert base.config_name == str(tiny_models / "model_sd") and base.shipped_config is None
    assert np.abs(_image(load_base_pipeline(base), 2)
                  - _image(load_base_pipeline(resolve_base(tiny_models / "model_sd")), 2)).max() <= 1e-5
    with pytest.raises(UserError, match="describes an SDXL model"):
        resolve_base(single_files["model_sd"], config=tiny_models / "model_sdxl")
    with pytest.raises(UserError, match="is for a single-file base"):
        resolve_base(tiny_models / "model_sd", config=tiny_models / "model_sd")


def test_a_file_of_another_size_is_refused_before_loading(single_files):
    """Our configurations are the real models' sizes: a tiny file does not fit them (one line, no traceback)."""
    with pytest.raises(UserError, match=r"UNet width is 32, the storyboard:sd15 configuration's 320.*--base-config"):
        resolve_base(single_files["model_sd"])
    with pytest.raises(UserError, match="is an SDXL model; this step runs SD 1.x / SD 2.x"):
        resolve_base(single_files["model_sdxl"])
    with pytest.raises(UserError, match="is an SD 1.x model; this step runs SDXL"):
        resolve_base(single_files["model_sd"], families=("sdxl",))


# --------------------------------------------------------------------------------------------
# Offline: nothing is fetched
# --------------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and refused; the hub's variables allow downloads, so a
    library that wanted to fetch would try."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[1:2] or args[:1]))
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return attempts


def test_single_file_loads_without_any_network_access(no_network, single_files, tiny_shipped_configs, tmp_path):
    from diffusers import StableDiffusionPipeline

    # Negative control: diffusers' own default (no local config) does reach for the hub, and the guard sees it.
    with pytest.raises(Exception):  # noqa: B017 (whatever diffusers makes of the refused connection)
        StableDiffusionPipeline.from_single_file(str(single_files["model_sd"]), cache_dir=str(tmp_path / "hub"))
    assert no_network, "the guard saw no connection attempt from diffusers' default path"
    no_network.clear()

    for name in ("model_sd", "model_sdxl"):
        family, _, prediction = TINY[name]
        pipe = load_base_pipeline(resolve_base(single_files[name], prediction_type=prediction, families=(family,)))
        assert _image(pipe, 1).shape == (64, 64, 3)
    assert no_network == []


# --------------------------------------------------------------------------------------------
# .ckpt: weights_only=True, and a refusal for anything that needs pickle
# --------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create ``marker``: what a malicious .ckpt does with code instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_ckpt_loads_only_through_weights_only(tiny_models, tiny_shipped_configs, tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ckpt = write_single_file(tiny_models / "model_sd", tmp_path / "model.ckpt")
    base = resolve_base(ckpt)
    assert base.family == "sd1" and base.shipped_config == "sd15"
    pipe = load_base_pipeline(base)
    assert calls and all(w is True for w in calls), calls
    assert np.abs(_image(pipe, 2) - _image(load_base_pipeline(resolve_base(tiny_models / "model_sd")), 2)).max() <= 1e-5


@pytest.mark.parametrize("extra", [{"hyper_parameters": argparse.Namespace(lr=1e-4)}, "payload"])
def test_ckpt_that_needs_pickle_is_refused_in_one_line(extra, tiny_models, tmp_path):
    marker = tmp_path / "ran"
    extra = {"callbacks": _Payload(marker)} if extra == "payload" else extra
    bad = write_single_file(tiny_models / "model_sd", tmp_path / "lightning.ckpt", extra=extra)
    with pytest.raises(UserError) as caught:
        resolve_base(bad, config=tiny_models / "model_sd")
    message = str(caught.value)
    assert "pickle" in message and "refused" in message and "weights_only=True" in message
    assert ("argparse.Namespace" if "hyper_parameters" in extra else "pickled io.open object") in message
    assert not marker.exists()  # the payload never ran
    # Negative control: the same tensors without the pickled object load.
    good = write_single_file(tiny_models / "model_sd", tmp_path / "plain.ckpt")
    assert resolve_base(good, config=tiny_models / "model_sd").family == "sd1"

    proc = run_front_door(REPO / "inference_trigger.py", "--base-model", bad, "--base-config", tiny_models / "model_sd",
                          "--checkpoint", "", "--prompt", "a man", "--output", tmp_path / "x.png", cwd=tmp_path)
    assert_one_line_error(proc, "needs Python's pickle", str(bad))
    assert not marker.exists() and not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------
# What a file is, from its keys
# --------------------------------------------------------------------------------------------
def _keys(tmp_path, *prefixes: str, conv_in_channels: int = 4, extra=()) -> FileKeys:
    shapes = {"model.diffusion_model.input_blocks.0.0.weight": (320, conv_in_channels, 3, 3),
              "model.diffusion_model.out.2.bias": (4,), "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}
    shapes.update({f"{p}x.weight": (1,) for p in prefixes})
    shapes.update(dict.fromkeys(extra, (1,)))
    return FileKeys(tmp_path / "model.safetensors", shapes)


@pytest.mark.parametrize("prefixes, family", [
    (["cond_stage_model.transformer.text_model."], "sd1"),
    (["cond_stage_model.model.transformer."], "sd2"),
    (["conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."], "sdxl"),
])
def test_family_from_keys(tmp_path, prefixes, family):
    found, evidence = detect_family(_keys(tmp_path, *prefixes))
    assert found == family and prefixes[-1].split(".")[0] in evidence


@pytest.mark.parametrize("keys, says", [
    (lambda t: _keys(t, "conditioner.embedders.0.model."), "SDXL refiner"),
    (lambda t: _keys(t, "cond_stage_model.transformer.", conv_in_channels=9), "inpainting model"),
    (lambda t: _keys(t, "cond_stage_model.transformer.", conv_in_channels=8), "instruct-pix2pix"),
    (lambda t: _keys(t), "no text encoder this pipeline knows"),
    (lambda t: FileKeys(t / "x.safetensors", {"lora_unet_down_blocks_0.lora_down.weight": (4, 320)}), "LoRA"),
    (lambda t: FileKeys(t / "x.safetensors", {"emb_params": (1, 768)}), "textual-inversion embedding"),
    (lambda t: FileKeys(t / "x.safetensors", {"encoder.conv_in.weight": (128, 3, 3, 3)}), "VAE alone"),
    (lambda t: FileKeys(t / "x.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
                                              "cond_stage_model.transformer.x": (1,)}), "holds no VAE"),
])
def test_what_is_not_a_base_is_named(tmp_path, keys, says):
    with pytest.raises(UserError, match=says):
        detect_family(keys(tmp_path))


def _sd2_file(single_files, tmp_path, spread: float, metadata=None, extra=None):
    """The tiny SD 2.x file with the last output attention's norm1.bias drawn at ``spread`` (ComfyUI's cue)."""
    state = load_file(str(single_files["model_sd2"]))
    name = max((k for k in state if k.endswith(".1.transformer_blocks.0.norm1.bias")),
               key=lambda k: int(k.split("output_blocks.")[1].split(".")[0]) if "output_blocks." in k else -1)
    assert "output_blocks." in name
    state[name] = torch.randn(state[name].shape, generator=torch.Generator().manual_seed(0)) * spread
    state.update(extra or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / f"sd2-{spread}.safetensors"
    save_file(state, str(out), metadata=metadata)
    return out


def test_sd2_prediction_type_sources_in_order(single_files, tmp_path, tiny_shipped_configs):
    v_like, eps_like = _sd2_file(single_files, tmp_path, 0.2), _sd2_file(single_files, tmp_path, 0.01)
    kind, why = detect_prediction(read_file_keys(v_like), "sd2")
    assert kind == "v_prediction" and "ComfyUI's rule" in why and "> 0.09" in why
    kind, why = detect_prediction(read_file_keys(eps_like), "sd2")  # negative control of the rule
    assert kind == "epsilon" and "<= 0.09" in why
    assert detect_prediction(read_file_keys(v_like), "sd1")[0] == "epsilon"  # the rule is SD 2.x's only
    # ... and it picks the configuration: 768-px v (DDIM) or 512-px epsilon (PNDM)
    assert resolve_base(v_like).shipped_config == "sd2_v" and resolve_base(eps_like).shipped_config == "sd2"
    assert resolve_base(v_like).native_size == 64  # the tiny sizes stand in for 768

    declared = _sd2_file(single_files, tmp_path / "m", 0.01, metadata={"modelspec.prediction_type": "v"})
    assert detect_prediction(read_file_keys(declared), "sd2") == ("v_prediction",
                                                                  "its modelspec.prediction_type metadata")
    marked = _sd2_file(single_files, tmp_path / "k", 0.01, extra={"v_pred": torch.zeros(0)})
    assert detect_prediction(read_file_keys(marked), "sd2")[1] == "the file's v_pred marker"
    v_like.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n", encoding="utf-8")
    eps_like.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n", encoding="utf-8")
    assert detect_prediction(read_file_keys(eps_like), "sd2") == ("epsilon", f"{eps_like.stem}.yaml beside it "
                                                                               "(parameterization)")
    assert detect_prediction(read_file_keys(v_like), "sd2", "epsilon") == ("epsilon", "--prediction-type")
    base = resolve_base(eps_like, prediction_type="v_prediction")
    assert base.shipped_config == "sd2_v" and "--prediction-type" in base.describe()


# --------------------------------------------------------------------------------------------
# Our configurations are the real models'
# --------------------------------------------------------------------------------------------
# Published parameter counts (diffusers' UNet2DConditionModel docstring: SD 1.5 UNet 859,520,964; the
# others as reported for stable-diffusion-2-1 and stable-diffusion-xl-base-1.0).
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sd2_v": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


def _meta_models(config: str) -> dict:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from storyboard.artifacts.base_model import CONFIGS_DIR

    root = CONFIGS_DIR / config
    with init_empty_weights():
        models = {"unet": UNet2DConditionModel.from_config(json.loads((root / "unet/config.json").read_text())),
                  "vae": AutoencoderKL.from_config(json.loads((root / "vae/config.json").read_text())),
                  "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))}
        if (root / "text_encoder_2").is_dir():
            models["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    return models


@pytest.mark.parametrize("config", list(PUBLISHED))
def test_shipped_configurations_build_the_published_models(config, tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from storyboard.artifacts.base_model import CONFIGS_DIR, BaseModel, check_shapes
    from storyboard.devkit import single_file as sf

    models = _meta_models(config)
    assert {part: sum(p.numel() for p in m.parameters()) for part, m in models.items()} == PUBLISHED[config]

    # The real layout of a file these configurations describe: detected, fits the size checks, and
    # diffusers' own converters map it back onto exactly the models' tensors.
    unet_config = json.loads((CONFIGS_DIR / config / "unet/config.json").read_text())
    vae_config = json.loads((CONFIGS_DIR / config / "vae/config.json").read_text())
    unet = sf.unet_to_original(models["unet"].state_dict(), unet_config)
    vae = sf.vae_to_original(models["vae"].state_dict(), vae_config)
    shapes = {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in unet.items()}
    shapes.update({f"first_stage_model.{k}": tuple(v.shape) for k, v in vae.items()})
    text = models["text_encoder"].state_dict()
    if config == "sdxl":
        shapes.update({f"conditioner.embedders.0.transformer.{k}": tuple(v.shape)
                       for k, v in sf.clip_to_original(text).items()})
        shapes.update({f"conditioner.embedders.1.model.{k}": tuple(v.shape)
                       for k, v in sf.open_clip_to_original(models["text_encoder_2"].state_dict()).items()})
    elif config.startswith("sd2"):
        shapes.update({f"cond_stage_model.model.{k}": tuple(v.shape)
                       for k, v in sf.open_clip_to_original(text).items()})
    else:
        shapes.update({f"cond_stage_model.transformer.{k}": tuple(v.shape)
                       for k, v in sf.clip_to_original(text).items()})
    keys = FileKeys(tmp_path / f"{config}.safetensors", shapes)
    family = detect_family(keys)[0]
    assert family == {"sd15": "sd1", "sdxl": "sdxl"}.get(config, "sd2")
    check_shapes(keys, BaseModel(keys.path, "single_file", family, "epsilon", CONFIGS_DIR / config,
                                 f"storyboard:{config}"))
    back = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in unet.items()}, unet_config)
    assert set(back) == set(models["unet"].state_dict())
    back = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in vae.items()}, vae_config)
    assert set(back) == set(models["vae"].state_dict())


def test_sd2_tokenizer_pads_like_open_clip(tiny_shipped_configs, single_files):
    from storyboard.artifacts.base_load import base_tokenizer

    sd2 = resolve_base(single_files["model_sd2"], prediction_type="v_prediction")
    sd1 = resolve_base(single_files["model_sd"])
    assert base_tokenizer(sd2).pad_token == "!" and base_tokenizer(sd2).pad_token_id == 0
    assert base_tokenizer(sd1).pad_token == "<|endoftext|>"
    assert base_tokenizer(sd1)("a man").input_ids == base_tokenizer(sd2)("a man").input_ids  # the same BPE


# --------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------
def test_single_file_fingerprint_is_the_files_sha256(single_files, tmp_path):
    path = single_files["model_sd"]
    expected = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert base_fingerprint(path) == expected
    assert base_fingerprint(_perturbed(path, tmp_path)) != expected  # one byte range changed


def test_describe_says_what_was_detected(single_files, tiny_shipped_configs):
    line = resolve_base(single_files["model_sd"]).describe()
    assert line == ("model_sd.safetensors: single file, SD 1.x (detected from cond_stage_model.transformer.* keys "
                    "(OpenAI CLIP text encoder)), epsilon (from the default (nothing in the file says "
                    "v-prediction)); configuration storyboard:sd15")
