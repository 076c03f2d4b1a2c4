"""Exact resume, checkpoint rotation, a diverging loss, and overfitting two images."""
from __future__ import annotations

import json

import pytest
import torch

from storyboard.core.cli import UserError

from train_support import load_safetensors, make_dataset, train_args, train_in_process

# Every source of randomness on: augmentations, caption shuffle and dropout, LoRA dropout, noise
# offset, accumulation, no latent cache (the VAE samples each step), pivotal token stop at step 4.
RANDOM_EVERYWHERE = {"max_train_steps": 6, "checkpointing_steps": 2, "train_batch_size": 1,
                     "gradient_accumulation_steps": 2, "lora_dropout": 0.1, "noise_offset": 0.05,
                     "caption_dropout_rate": 0.3, "caption_tag_dropout_rate": 0.2, "snr_gamma": 5.0,
                     "token_training_steps": 4, "learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 1}
FLAGS = ("--random_flip", "--no-center_crop", "--shuffle_caption")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("resume") / "Dataset_fin", n=3, size=72)


def _weights(out):
    tensors = load_safetensors(out / "pytorch_lora_weights.safetensors")
    for stem in ("fs_trg", "cu_trg"):
        tensors[stem] = load_safetensors(out / "embeddings" / f"{stem}.safetensors")["emb_params"]
    return tensors


def test_interrupted_twice_and_resumed_twice_equals_uninterrupted(tiny_models, data, tmp_path):
    base = tiny_models / "model_sd"
    whole = tmp_path / "whole"
    assert train_in_process(train_args(base, data, whole, *FLAGS, checkpoints_total_limit=1, **RANDOM_EVERYWHERE)) == 0
    # rotation: only the newest checkpoint is kept (checkpoints at 2 and 4; the end is the output itself)
    assert sorted(p.name for p in whole.glob("checkpoint-*")) == ["checkpoint-4"]

    parts = tmp_path / "parts"
    # killed after step 3 (checkpoint 2 on disk), resumed; killed after step 5 (checkpoint 4), resumed.
    assert train_in_process(train_args(base, data, parts, *FLAGS, "--debug_stop_after_step", "3",
                                       **RANDOM_EVERYWHERE)) == 3
    assert not (parts / "pytorch_lora_weights.safetensors").exists()
    assert train_in_process(train_args(base, data, parts, *FLAGS, "--resume_from_checkpoint", "latest",
                                       "--debug_stop_after_step", "5", **RANDOM_EVERYWHERE)) == 3
    assert train_in_process(train_args(base, data, parts, *FLAGS, "--resume_from_checkpoint", "latest",
                                       **RANDOM_EVERYWHERE)) == 0

    a, b = _weights(whole), _weights(parts)
    assert a.keys() == b.keys() and len(a) > 10
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"{len(unequal)} tensors differ after resume, e.g. {unequal[:3]}"
    losses = [json.loads(line)["loss"] for line in (whole / "logs/loss.jsonl").read_text().splitlines()]
    assert losses == [json.loads(line)["loss"] for line in (parts / "logs/loss.jsonl").read_text().splitlines()]
    assert len(losses) == 6


def test_resume_with_other_settings_is_refused(tiny_models, data, tmp_path):
    base = tiny_models / "model_sd"
    out = tmp_path / "run"
    assert train_in_process(train_args(base, data, out, "--debug_stop_after_step", "2", checkpointing_steps=2)) == 3
    with pytest.raises(UserError, match="cannot resume .* other settings .*rank"):
        train_in_process(train_args(base, data, out, "--resume_from_checkpoint", "latest", checkpointing_steps=2,
                                    rank=8))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_models, data, tmp_path):
    out = tmp_path / "nan"
    argv = train_args(tiny_models / "model_sd", data, out, "--debug_nan_at_step", "3", checkpointing_steps=2,
                      max_train_steps=6)
    with pytest.raises(UserError, match=r"loss became nan at step 3.*last good checkpoint is .*checkpoint-2"):
        train_in_process(argv)
    assert (out / "checkpoint-2" / "training_state" / "state.json").is_file()
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_overfitting_two_images_drives_the_loss_well_down(tiny_models, tmp_path):
    data = make_dataset(tmp_path / "two", n=2)
    out = tmp_path / "overfit"
    argv = train_args(tiny_models / "model_sd", data, out, "--lora_include_ff", "--cache_latents", max_train_steps=80,
                      rank=16, learning_rate=1e-2, text_encoder_lr=1e-3, token_learning_rate=1e-2, eval_loss_images=2)
    assert train_in_process(argv) == 0
    training = json.loads((out / "trigger_manifest.json").read_text())["training"]
    start, end = training["fixed_noise_loss_start"], training["fixed_noise_loss_end"]
    assert end < 0.65 * start, (start, end)  # measured: 1.19 -> 0.62
    assert training["final_loss_mean10"] < 0.75 * training["first_loss"]


def test_a_base_saved_in_fp16_trains_with_fp32_weights(tiny_models, data, tmp_path):
    """Many SD folders hold fp16 weights only; training without mixed precision must still run
    in fp32 (and trainable weights are fp32 in every mode)."""
    import torch
    from diffusers import StableDiffusionPipeline

    half = tmp_path / "model_sd_fp16"
    StableDiffusionPipeline.from_pretrained(tiny_models / "model_sd", dtype=torch.float16).save_pretrained(half)
    out = tmp_path / "out"
    assert train_in_process(train_args(half, data, out, max_train_steps=2)) == 0
    tensors = load_safetensors(out / "pytorch_lora_weights.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}


@pytest.mark.parametrize("extra", [
    {"text_encoder_mode": "frozen", "prediction_type": "v_prediction", "snr_gamma": 5.0},
    {"text_encoder_mode": "full", "token_training_steps": 1, "checkpointing_steps": 1},
])
def test_other_modes_train_save_and_reload(tiny_models, data, tmp_path, extra):
    """A frozen text encoder with v-prediction + min-SNR, and a fully tuned encoder (saved as a
    diffusers subfolder) with pivotal tuning: both pass the reload check through plain diffusers."""
    out = tmp_path / "out"
    assert train_in_process(train_args(tiny_models / "model_sd", data, out, max_train_steps=2, **extra)) == 0
    manifest = json.loads((out / "trigger_manifest.json").read_text())
    assert manifest["reload_check"]["ok"], manifest["reload_check"]["problems"]
    lora = load_safetensors(out / "pytorch_lora_weights.safetensors")
    has_te = any(k.startswith("text_encoder.") for k in lora)
    assert has_te is False  # only the lora mode puts the text encoder into the LoRA file
    if extra["text_encoder_mode"] == "full":
        from transformers import CLIPTextModel, CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
        te = CLIPTextModel.from_pretrained(out / "text_encoder")
        assert len(tok) == 49410 and te.get_input_embeddings().weight.shape[0] == 49410
        row = te.get_input_embeddings().weight[tok.convert_tokens_to_ids("<fs_trg>")]
        final = load_safetensors(out / "embeddings/fs_trg.safetensors")["emb_params"]
        assert torch.equal(row, final[0])
        # pivotal tuning: the token rows stopped after step 1 while the rest went on training
        assert torch.equal(load_safetensors(out / "checkpoint-1/embeddings/fs_trg.safetensors")["emb_params"], final)
        first_te = load_safetensors(out / "checkpoint-1/training_state/trainable.safetensors")
        assert any("layers.0.self_attn.q_proj.weight" in k for k in first_te)
    else:
        assert manifest["base_model"]["prediction_type"] == "v_prediction"
