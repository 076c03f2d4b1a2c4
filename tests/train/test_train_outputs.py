"""One short training run, then everything it saved: each format loads back through plain diffusers
calls (no project code) and gives the image of the model as training held it, merged by hand here
(``W + alpha/rank * B @ A`` for every LoRA pair, the trained rows appended to the table), independent
of diffusers' LoRA loader and of our exporter; the base rows training held are the base model's; the
exporter's reload check fails on a broken file; the manifest says what users and inference need.

Each image comparison holds its negative controls: the hand merge without the LoRA, or at alpha = rank
(what a converter that ignores alpha writes), must differ from the files' image by far more than the
tolerance."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from train_support import load_safetensors, make_dataset, train_args, train_in_process

RANK, ALPHA = 4, 2.0  # alpha != rank: a converter that writes alpha = rank would show here
PROMPT = "<fs_trg>, a person"
BASE_ROWS = 49408  # the tiny base's CLIP vocabulary (SD1.5's)
FLOAT_TOLERANCE = 1e-4  # float images in [0, 1]: LoRA merged into the weights vs beside them (measured 1.1e-5)
CONTROL_MARGIN = 100  # each negative control must differ by this many tolerances (measured: over 6000)


def _run_argv(base, root, **overrides) -> tuple[list[str], dict]:
    """The module's run (6 steps, a checkpoint at 3, previews, fixed-noise loss) in ``root``. The
    learning rates are large so that the LoRA and the token rows visibly change the image."""
    data = make_dataset(root / "Dataset_fin", n=4)
    out = root / "model_sd_weight" / "train_fs"
    argv = train_args(base, data, out, "--lora_include_ff", max_train_steps=6,
                      checkpointing_steps=3, rank=RANK, lora_alpha=ALPHA, learning_rate=1e-1, text_encoder_lr=1e-1,
                      token_learning_rate=5e-2, num_validation_images=1, validation_inference_steps=2,
                      eval_loss_images=2, **overrides)
    return argv, {"base": base, "out": out, "data": data}


def _held_at_finish(ctx) -> dict:
    """What training holds when it starts saving, read from the trained modules themselves (not from
    the exporter): every LoRA pair ``{module: (A, B)}`` per model, the whole token table, the tokens."""
    from storyboard.train.tokens import find_trigger_embedding

    held = {"tokens": [(t["token"], t["token_id"]) for t in ctx.tokens_info]}
    for part in ("unet", "text_encoder"):
        params = dict(getattr(ctx.accelerator.unwrap_model(ctx.model), part).named_parameters())
        held[part] = {name.removesuffix(".lora_A.default.weight"): (
            a.detach().float().cpu().clone(),
            params[name.replace(".lora_A.", ".lora_B.")].detach().float().cpu().clone())
            for name, a in params.items() if name.endswith(".lora_A.default.weight")}
    te = ctx.accelerator.unwrap_model(ctx.model).text_encoder
    held["table"] = find_trigger_embedding(te).weight.detach().float().cpu().clone()
    return held


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """The module's run, and what training held when it started saving (``run["held"]``)."""
    from storyboard.train import loop

    argv, result = _run_argv(tiny_models / "model_sd", tmp_path_factory.mktemp("train_outputs"))
    original = loop.finish

    def watched(ctx, out, step):
        result["held"] = _held_at_finish(ctx)
        return original(ctx, out, step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "finish", watched)
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


def _merged_by_hand(base, held: dict, scale: float | None = ALPHA / RANK):
    """A plain base pipeline with training's weights written into it by hand: each LoRA pair merged as
    ``W += scale * B @ A`` (``scale=None``: no LoRA), the tokens added and their trained rows set."""
    pipe = _fresh(base)
    with torch.no_grad():
        for part in ("unet", "text_encoder") if scale is not None else ():
            modules = dict(getattr(pipe, part).named_modules())
            for name, (a, b) in held[part].items():
                modules[name].weight += scale * (b @ a)
        tokens = [token for token, _ in held["tokens"]]
        assert pipe.tokenizer.add_tokens(tokens) == len(tokens)
        assert pipe.tokenizer.convert_tokens_to_ids(tokens) == [token_id for _, token_id in held["tokens"]]
        pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
        pipe.text_encoder.get_input_embeddings().weight[BASE_ROWS:] = held["table"][BASE_ROWS:]
    return pipe


@pytest.fixture(scope="module")
def trained(run):
    """Images of the model as training held it (merged by hand), and of the two negative controls."""
    base, held = run["base"], run["held"]
    return {"trained": _image(_merged_by_hand(base, held)),
            "no LoRA": _image(_merged_by_hand(base, held, scale=None)),
            "alpha = rank": _image(_merged_by_hand(base, held, scale=1.0))}


def _assert_same_image_and_controls_differ(image, trained: dict) -> None:
    assert np.abs(image - trained["trained"]).max() < FLOAT_TOLERANCE
    for name in ("no LoRA", "alpha = rank"):
        assert np.abs(image - trained[name]).max() > CONTROL_MARGIN * FLOAT_TOLERANCE, name


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


def _changed_rows(table: torch.Tensor, reference: torch.Tensor) -> list[int]:
    return torch.nonzero((table != reference).any(dim=1)).flatten().tolist()


def test_base_rows_untouched_and_token_rows_trained(run):
    """The token table as training held it after its last step: the base rows equal the base model's
    bit for bit, the trigger rows moved away from their initial means and are what the embedding files
    hold. Control: the same comparison on a copy with one base row moved by one float step reports
    exactly that row."""
    from transformers import CLIPTextModel

    base_table = CLIPTextModel.from_pretrained(run["base"], subfolder="text_encoder").get_input_embeddings().weight
    base_table = base_table.detach()
    held = run["held"]["table"]
    assert held.shape == (BASE_ROWS + 2, base_table.shape[1])
    assert _changed_rows(held[:BASE_ROWS], base_table) == []
    moved = held[:BASE_ROWS].clone()
    moved[1234, 5] = torch.nextafter(moved[1234, 5], torch.tensor(float("inf")))
    assert _changed_rows(moved, base_table) == [1234]

    pipe = _fresh(run["base"])
    tok = pipe.tokenizer
    for token, token_id in run["held"]["tokens"]:
        saved = load_safetensors(run["out"] / f"embeddings/{token.strip('<>')}.safetensors")["emb_params"][0]
        assert torch.equal(saved, held[token_id])
    full, shot = tok("full shot", add_special_tokens=False).input_ids
    init = (base_table[full] + base_table[shot]) / 2
    fs_id = dict(run["held"]["tokens"])["<fs_trg>"]
    assert (held[fs_id] - init).abs().max() > 1e-2  # it did train (token lr 5e-2, 6 steps)


def test_diffusers_files_through_plain_diffusers_give_the_trained_model(run, trained):
    out = run["out"]
    pipe = _fresh(run["base"])
    pipe.load_lora_weights(out)
    pipe.load_textual_inversion(str(out / "embeddings/fs_trg.safetensors"), token="<fs_trg>")
    pipe.load_textual_inversion(str(out / "embeddings/cu_trg.safetensors"), token="<cu_trg>")
    _assert_same_image_and_controls_differ(_image(pipe), trained)


def test_webui_lora_through_plain_diffusers_gives_the_trained_model(run, trained):
    out = run["out"]
    pipe = _fresh(run["base"])
    pipe.load_lora_weights(out, weight_name="lora_webui.safetensors")
    pipe.load_textual_inversion([str(out / "embeddings/cu_trg.safetensors"),
                                 str(out / "embeddings/fs_trg.safetensors")], token=["<cu_trg>", "<fs_trg>"])
    _assert_same_image_and_controls_differ(_image(pipe), trained)


def test_preview_png_is_the_trained_model(run):
    """The saved preview is the image of the model as training held it (merged by hand, same prompt,
    seed and settings), not merely what diffusers makes from the files. Controls: the hand merge
    without the LoRA, or at alpha = rank, is far from the preview."""
    from PIL import Image

    out, held = run["out"], run["held"]
    prompts = (out / "validation/step-000006/prompts.txt").read_text().splitlines()
    prompt = prompts[1].split(": ", 1)[1]
    assert prompt == PROMPT

    def made(pipe) -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(0)
        image = pipe(prompt, num_inference_steps=2, guidance_scale=7.5, generator=generator, height=64, width=64)
        return np.asarray(image.images[0], dtype=int)

    saved = np.asarray(Image.open(out / "validation/step-000006/p01_00.png"), dtype=int)
    assert np.abs(made(_merged_by_hand(run["base"], held)) - saved).max() <= 1  # one level: float rounding
    for scale in (None, 1.0):
        diff = np.abs(made(_merged_by_hand(run["base"], held, scale=scale)) - saved)
        assert diff.max() > 10 and diff.mean() > 1, (scale, diff.max(), diff.mean())


# --------------------------------------------------------------------------------------------
# The exporter's reload check fails on a broken file
# --------------------------------------------------------------------------------------------
def _expected_state(held: dict, part: str) -> dict:
    """The exporter's state-dict layout (peft keys, no adapter name), built from what training held."""
    return {f"{module}.lora_{x}.weight": t for module, (a, b) in held[part].items() for x, t in (("A", a), ("B", b))}


def _rewrite(path, edit) -> None:
    """Load a safetensors file, let ``edit`` change its tensors (in place), save it with its metadata."""
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_safetensors(path)
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _drop_one_unet_module(tensors):
    [key] = [k for k in tensors if k.startswith("unet.") and ".attn2.to_k.lora_A." in k][:1]
    del tensors[key], tensors[key.replace(".lora_A.", ".lora_B.")]


def _alpha_is_rank(tensors):
    for key in [k for k in tensors if k.endswith(".alpha")]:
        tensors[key] = torch.tensor(float(RANK))


def _nudge_one_text_encoder_matrix(tensors):
    key = sorted(k for k in tensors if k.startswith("text_encoder.") and ".lora_B." in k)[0]
    tensors[key][0, 0] += 1e-3


def _nudge_one_row(tensors):
    tensors["emb_params"][0, 3] += 1e-3


BROKEN_FILES = {  # name: (file, how it is broken, the problems the check must report given the run's module counts)
    "a module left out": ("pytorch_lora_weights.safetensors", _drop_one_unet_module,
                          lambda n: ["diffusers_lora/unet: 1 missing, 0 changed"]),
    "alpha written as rank": ("lora_webui.safetensors", _alpha_is_rank,
                              lambda n: [f"webui_lora/unet: 0 missing, {n['unet']} changed",
                                         f"webui_lora/text_encoder: 0 missing, {n['text_encoder']} changed"]),
    "one matrix changed": ("pytorch_lora_weights.safetensors", _nudge_one_text_encoder_matrix,
                           lambda n: ["diffusers_lora/text_encoder: 0 missing, 1 changed"]),
    "one token row changed": ("embeddings/fs_trg.safetensors", _nudge_one_row,
                              lambda n: ["embedding <fs_trg>: row changed"]),
}


def _reload_check(run, folder) -> dict:
    from storyboard.artifacts.write import reload_check

    held = run["held"]
    manifest = json.loads((run["out"] / "trigger_manifest.json").read_text())
    rows = torch.stack([held["table"][token_id] for _, token_id in held["tokens"]])
    return reload_check(run["base"], folder, _expected_state(held, "unet"), _expected_state(held, "text_encoder"),
                        manifest["tokens"], rows, ALPHA / RANK)


def test_reload_check_passes_on_the_files_training_wrote(run):
    """Against what training held (read from the modules, not from the exporter): every module, scale
    and row of every file matches."""
    report = _reload_check(run, run["out"])
    assert report["ok"] is True and report["problems"] == []
    for label in ("diffusers_lora", "webui_lora"):
        for part in ("unet", "text_encoder"):
            assert report[label][part]["loaded"] == report[label][part]["modules"] == len(run["held"][part]) > 0


@pytest.mark.parametrize("broken", sorted(BROKEN_FILES))
def test_reload_check_fails_on_a_broken_file(run, tmp_path, broken):
    """Negative controls of the reload check: a copy of the trained folder with one file broken the way
    an exporter or a converter breaks it; the check must say which file and what."""
    file, edit, problems = BROKEN_FILES[broken]
    folder = shutil.copytree(run["out"], tmp_path / "train_fs", ignore=shutil.ignore_patterns("checkpoint-*"))
    _rewrite(folder / file, edit)
    report = _reload_check(run, folder)
    assert report["ok"] is False
    assert report["problems"] == problems({part: len(run["held"][part]) for part in ("unet", "text_encoder")})


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
