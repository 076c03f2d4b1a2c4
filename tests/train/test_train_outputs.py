"""One short training run, then everything it saved: each format loads back through plain diffusers
calls (no project code) and gives the same image as our own loader; the base rows are untouched;
the manifest says what users and inference need."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from train_support import load_safetensors, make_dataset, train_args, train_in_process

RANK, ALPHA = 4, 2.0  # alpha != rank: a converter that writes alpha = rank would show here
PROMPT = "<fs_trg>, a person"


def _run_argv(base, root, **overrides) -> tuple[list[str], dict]:
    """The module's run (6 steps, a checkpoint at 3, previews, fixed-noise loss) in ``root``."""
    data = make_dataset(root / "Dataset_fin", n=4)
    out = root / "model_sd_weight" / "train_fs"
    argv = train_args(base, data, out, "--lora_include_ff", max_train_steps=6,
                      checkpointing_steps=3, rank=RANK, lora_alpha=ALPHA, learning_rate=1e-2, text_encoder_lr=1e-2,
                      token_learning_rate=5e-2, num_validation_images=1, validation_inference_steps=2,
                      eval_loss_images=2, **overrides)
    return argv, {"base": base, "out": out, "data": data}


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    argv, result = _run_argv(tiny_models / "model_sd", tmp_path_factory.mktemp("train_outputs"))
    assert train_in_process(argv) == 0
    return result


def _image(pipe, prompt=PROMPT, seed=7):
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=3, guidance_scale=5.0, generator=generator, output_type="np",
                height=64, width=64).images[0]


def _fresh(base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(run):
    """The image from our own loader (the one previews and inference use)."""
    from storyboard.artifacts.load import load_trained_pipeline

    return _image(load_trained_pipeline(run["base"], run["out"]))


def test_every_output_exists(run):
    out = run["out"]
    for name in ("pytorch_lora_weights.safetensors", "lora_webui.safetensors", "embeddings/fs_trg.safetensors",
                 "embeddings/cu_trg.safetensors", "trigger_manifest.json", "logs/loss.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint-3" / "training_state" / "state.json").is_file()
    assert (out / "checkpoint-3" / "pytorch_lora_weights.safetensors").is_file()  # a checkpoint is a usable output
    assert sorted(p.name for p in (out / "validation" / "step-000006").glob("*.png")) == ["p00_00.png", "p01_00.png"]
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_webui_lora_is_named_after_the_run(run):
    """The file a user copies into the WebUI's or ComfyUI's models/Lora is named after the run (its stem is
    the <lora:NAME:...> word), kohya's way for checkpoints; lora_webui.safetensors is the same bytes."""
    out = run["out"]
    named, alias = out / "train_fs.safetensors", out / "lora_webui.safetensors"
    assert named.read_bytes() == alias.read_bytes()
    assert named.stat().st_ino == alias.stat().st_ino  # a hard link here, not a second copy
    step = out / "checkpoint-3" / "train_fs-step00000003.safetensors"
    assert step.is_file() and not (out / "checkpoint-3" / "train_fs.safetensors").exists()
    manifest = json.loads((out / "trigger_manifest.json").read_text())
    assert manifest["files"]["webui_lora"] == "train_fs.safetensors"
    assert manifest["files"]["comfyui_workflow"] == "comfyui_workflow.json"
    assert set(manifest["files"]["sha256"]) >= {"train_fs.safetensors", "lora_webui.safetensors"}
    from safetensors import safe_open

    with safe_open(str(named), "pt") as f:
        assert f.metadata()["ss_output_name"] == "train_fs"
    workflow = json.loads((out / "checkpoint-3" / "comfyui_workflow.json").read_text())
    assert workflow["10"]["inputs"]["lora_name"] == "train_fs-step00000003.safetensors"


def test_manifest_records_what_inference_needs(run):
    from storyboard.artifacts.base_model import base_fingerprint

    manifest = json.loads((run["out"] / "trigger_manifest.json").read_text())
    assert [t["token"] for t in manifest["tokens"]] == ["<cu_trg>", "<fs_trg>"]
    assert manifest["tokens"][1]["initializer"] == "full shot"
    assert manifest["tokens"][1]["embedding_file"] == "embeddings/fs_trg.safetensors"
    assert manifest["base_model"]["fingerprint"] == base_fingerprint(run["base"])
    assert manifest["base_model"]["tokenizer_size"] == 49408 and manifest["tokenizer_size"] == 49410
    assert manifest["lora"] == {**manifest["lora"], "rank": RANK, "alpha": ALPHA, "scale": ALPHA / RANK}
    assert manifest["training"]["global_step"] == 6 and manifest["training"]["final_loss"] is not None
    assert manifest["hyperparameters"]["rank"] == RANK and "torch" in manifest["versions"]
    assert manifest["reload_check"]["ok"] is True, manifest["reload_check"]["problems"]
    webui_unet = manifest["reload_check"]["webui_lora"]["unet"]
    assert webui_unet["loaded"] == webui_unet["modules"] > 0


def test_embedding_files_hold_one_tensor_under_one_key(run):
    for stem in ("fs_trg", "cu_trg"):
        tensors = load_safetensors(run["out"] / "embeddings" / f"{stem}.safetensors")
        assert list(tensors) == ["emb_params"] and tensors["emb_params"].shape == (1, 32)


def test_webui_lora_has_kohya_names_and_the_alpha_trained(run):
    tensors = load_safetensors(run["out"] / "lora_webui.safetensors")
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in tensors)
    assert any("_ff_net_0_proj.lora_down.weight" in k for k in tensors)
    alphas = {float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {ALPHA}
    assert not any("emb" in k for k in tensors)  # no bundled embeddings


def test_base_rows_untouched_and_token_rows_trained(run):
    """Plain diffusers: the loaded table's base rows equal the base model's, bit for bit."""
    from transformers import CLIPTextModel

    base_table = CLIPTextModel.from_pretrained(run["base"], subfolder="text_encoder").get_input_embeddings().weight
    pipe = _fresh(run["base"])
    pipe.load_textual_inversion(str(run["out"] / "embeddings/fs_trg.safetensors"), token="<fs_trg>")
    table = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[:49408], base_table)
    tok = pipe.tokenizer
    full, shot = tok("full shot", add_special_tokens=False).input_ids
    init = (base_table[full] + base_table[shot]) / 2
    assert not torch.allclose(table[tok.convert_tokens_to_ids("<fs_trg>")], init)  # it did train


def test_diffusers_files_through_plain_diffusers_give_our_image(run, ours):
    out = run["out"]
    pipe = _fresh(run["base"])
    pipe.load_lora_weights(out)
    pipe.load_textual_inversion(str(out / "embeddings/fs_trg.safetensors"), token="<fs_trg>")
    pipe.load_textual_inversion(str(out / "embeddings/cu_trg.safetensors"), token="<cu_trg>")
    assert np.array_equal(_image(pipe), ours)


def test_webui_lora_through_plain_diffusers_gives_our_image(run, ours):
    out = run["out"]
    pipe = _fresh(run["base"])
    pipe.load_lora_weights(out, weight_name="lora_webui.safetensors")
    pipe.load_textual_inversion([str(out / "embeddings/cu_trg.safetensors"),
                                 str(out / "embeddings/fs_trg.safetensors")], token=["<cu_trg>", "<fs_trg>"])
    image = _image(pipe)
    assert np.abs(image - ours).max() < 1e-5
    # and the LoRA matters: without it the image differs (so the comparisons above mean something)
    bare = _fresh(run["base"])
    bare.load_textual_inversion(str(out / "embeddings/fs_trg.safetensors"), token="<fs_trg>")
    assert np.abs(_image(bare) - ours).max() > 1e-3


def test_preview_png_is_what_a_user_gets(run):
    """The saved preview equals an image a user makes with plain diffusers from the saved files."""
    from PIL import Image

    out = run["out"]
    pipe = _fresh(run["base"])
    pipe.load_lora_weights(out)
    for stem in ("cu_trg", "fs_trg"):
        pipe.load_textual_inversion(str(out / f"embeddings/{stem}.safetensors"), token=f"<{stem}>")
    prompts = (out / "validation/step-000006/prompts.txt").read_text().splitlines()
    prompt = prompts[1].split(": ", 1)[1]
    generator = torch.Generator("cpu").manual_seed(0)
    mine = pipe(prompt, num_inference_steps=2, guidance_scale=7.5, generator=generator, height=64, width=64).images[0]
    saved = Image.open(out / "validation/step-000006/p01_00.png")
    diff = np.abs(np.asarray(mine, dtype=int) - np.asarray(saved, dtype=int))
    assert diff.max() <= 1  # PNG of the same pixels (one level for thread-count rounding)


# --------------------------------------------------------------------------------------------
# The same run in bf16 mixed precision (CPU autocast is bf16, so this runs here as on a GPU)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_run(tiny_models, tmp_path_factory):
    """The module's run with ``--mixed_precision bf16``, watched at every micro-batch: the dtypes of the
    trainable and frozen weights while training, each loss, and the frozen token rows as training holds
    them (after the last micro-batch)."""
    from storyboard.train import loop
    from storyboard.train.models import named_trainables
    from storyboard.train.tokens import find_trigger_embedding

    argv, result = _run_argv(tiny_models / "model_sd", tmp_path_factory.mktemp("train_bf16"), mixed_precision="bf16")
    seen = {"trainable": {}, "frozen": set(), "losses": [], "base_rows": None}
    original = loop.micro_batch_loss

    def watched(ctx, batch, m):
        loss = original(ctx, batch, m)
        for name, p in named_trainables(ctx.models).items():
            seen["trainable"].setdefault(name, set()).add(p.dtype)
        for module in (ctx.models.unet, ctx.models.text_encoder):
            seen["frozen"].update(p.dtype for p in module.parameters() if not p.requires_grad)
        seen["losses"].append(loss.item())
        seen["base_rows"] = find_trigger_embedding(ctx.models.text_encoder).base.weight.detach().clone()
        return loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "micro_batch_loss", watched)
        assert train_in_process(argv) == 0
    return {**result, "seen": seen, "manifest": json.loads((result["out"] / "trigger_manifest.json").read_text())}


def test_bf16_trains_fp32_parameters_beside_bf16_frozen_weights(bf16_run):
    seen = bf16_run["seen"]
    assert len(seen["losses"]) == 6  # one micro-batch per step
    names = set(seen["trainable"])
    assert any(n.endswith("token_embedding.trigger") for n in names)  # (transformers 4 nests text_model.)
    assert any(".lora_A." in n for n in names if n.startswith("unet.")) and any("lora_B" in n for n in names)
    assert {dtype for dtypes in seen["trainable"].values() for dtype in dtypes} == {torch.float32}
    assert seen["frozen"] == {torch.bfloat16}  # mixed precision really was on
    assert bf16_run["manifest"]["training"]["mixed_precision"] == "bf16"
    # Adam's moments are as wide as the parameters they follow
    blob = torch.load(bf16_run["out"] / "checkpoint-3" / "training_state" / "optimizer.pt", weights_only=True)
    moments = [t for state in blob["optimizer"]["state"].values() for k, t in state.items() if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_bf16_loss_is_finite(bf16_run):
    training = bf16_run["manifest"]["training"]
    logged = [json.loads(line)["loss"] for line in (bf16_run["out"] / "logs/loss.jsonl").read_text().splitlines()]
    values = bf16_run["seen"]["losses"] + logged + [training[k] for k in (
        "first_loss", "final_loss", "fixed_noise_loss_start", "fixed_noise_loss_end")]
    assert len(logged) == 6 and all(np.isfinite(v) for v in values), values


def _safetensors_layout(out) -> dict:
    """``{relative file: {key: (dtype, shape)}}`` of every safetensors file a run wrote."""
    layout = {}
    for path in sorted(out.rglob("*.safetensors")):
        layout[str(path.relative_to(out))] = {k: (t.dtype, tuple(t.shape)) for k, t in load_safetensors(path).items()}
    return layout


def test_bf16_saves_every_file_in_fp32_like_the_fp32_run(run, bf16_run):
    """Every file exists, keys and shapes match the fp32 run's, and every tensor is fp32 (the formats
    document fp32: write.lora_state, save_embeddings, checkpoints' trainable.safetensors)."""
    bf16, fp32 = _safetensors_layout(bf16_run["out"]), _safetensors_layout(run["out"])
    assert set(bf16) == set(fp32) and "checkpoint-3/training_state/trainable.safetensors" in bf16
    assert bf16 == fp32
    assert {dtype for tensors in bf16.values() for dtype, _ in tensors.values()} == {torch.float32}
    # tensorboard names its files and folders after the time and the process: the numbers are masked
    others = lambda out: sorted(re.sub(r"\d+(\.\d+)?", "N", rel) if rel.startswith("logs/storyboard-trigger/") else rel
                                for rel in (str(p.relative_to(out)) for p in out.rglob("*")
                                            if p.is_file() and p.suffix != ".safetensors"))
    assert others(bf16_run["out"]) == others(run["out"])  # manifests, loss log, previews, training state
    assert set(bf16_run["manifest"]["files"]["sha256"]) == set(json.loads(
        (run["out"] / "trigger_manifest.json").read_text())["files"]["sha256"])


def test_bf16_reload_check_passes(bf16_run):
    check = bf16_run["manifest"]["reload_check"]
    assert check["ok"] is True, check["problems"]
    assert check["diffusers_lora"]["unet"]["loaded"] == check["diffusers_lora"]["unet"]["modules"] > 0


def test_bf16_frozen_token_rows_stay_the_base_rows(bf16_run):
    """Training holds the base rows in bf16 (the base's values, rounded once, never updated); a user's
    pipeline (plain diffusers, fp32) gets the base's rows bit for bit plus the trained fp32 rows."""
    from transformers import CLIPTextModel

    base_table = CLIPTextModel.from_pretrained(bf16_run["base"], subfolder="text_encoder").get_input_embeddings().weight
    held = bf16_run["seen"]["base_rows"]
    assert held.dtype == torch.bfloat16 and torch.equal(held, base_table.detach().to(torch.bfloat16))
    pipe = _fresh(bf16_run["base"])
    out = bf16_run["out"]
    for stem in ("cu_trg", "fs_trg"):
        pipe.load_textual_inversion(str(out / f"embeddings/{stem}.safetensors"), token=f"<{stem}>")
    table = pipe.text_encoder.get_input_embeddings().weight
    assert table.dtype == torch.float32 and torch.equal(table[:49408], base_table)
    saved = load_safetensors(out / "embeddings/fs_trg.safetensors")["emb_params"][0]
    assert torch.equal(table[pipe.tokenizer.convert_tokens_to_ids("<fs_trg>")], saved)
