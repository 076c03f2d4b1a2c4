"""A diffusers Stable Diffusion folder written as one original-layout checkpoint file, the form the
A1111 WebUI, ComfyUI and kohya sd-scripts keep their base models in, so tests can load a single file
made from a tiny model and compare its images with the folder's.

    python -m storyboard.devkit.single_file --model DIR --out FILE.safetensors [--half]
    python -m storyboard.devkit.single_file --model DIR --out FILE.ckpt        # {"state_dict": ...}

diffusers 0.42.1 reads the original layout (``from_single_file``) but ships no writer for it (the
``scripts/convert_diffusers_to_original_*.py`` of its repository are not installed), so the mapping is
written here from the layout itself, for any block count (the tiny models have two UNet levels, the
real ones three or four):

* UNet -> ``model.diffusion_model.``: ``input_blocks.{1 + i*(L+1) + j}.0`` (resnet ``j`` of down level
  ``i``, ``L`` = layers_per_block) and ``.1`` (its attention), the downsampler at ``input_blocks.{(i+1)*(L+1)}.0.op``,
  ``middle_block.{0,1,2}``, ``output_blocks.{i*(L+1) + j}.{0,1}`` and the upsampler after the last of a
  level (``.1.conv``, or ``.2.conv`` behind an attention); resnet parts renamed (``norm1`` ->
  ``in_layers.0``, ``conv1`` -> ``in_layers.2``, ``norm2`` -> ``out_layers.0``, ``conv2`` -> ``out_layers.3``,
  ``time_emb_proj`` -> ``emb_layers.1``, ``conv_shortcut`` -> ``skip_connection``); SDXL's
  ``add_embedding`` -> ``label_emb.0``.
* VAE -> ``first_stage_model.``: ``down.{i}.block.{j}``, ``up.{n-1-i}.block.{j}`` (the decoder's levels are
  numbered from the bottom), ``mid.block_{1,2}``, ``mid.attn_1`` with ``q``/``k``/``v``/``proj_out`` as
  1x1 convolutions, ``norm_out``, ``nin_shortcut``.
* CLIP (SD 1.x; SDXL's first encoder) -> ``cond_stage_model.transformer.text_model.`` /
  ``conditioner.embedders.0.transformer.text_model.``: transformers' own names, plus ``position_ids``.
* OpenCLIP (SD 2.x; SDXL's second encoder) -> ``cond_stage_model.model.`` /
  ``conditioner.embedders.1.model.``: ``transformer.resblocks.{n}`` with ``ln_1``/``ln_2``, ``attn.in_proj_*``
  (q, k, v stacked), ``attn.out_proj``, ``mlp.c_fc``/``mlp.c_proj``, ``token_embedding``,
  ``positional_embedding``, ``ln_final``, ``text_projection`` (transposed: open_clip multiplies from the left).

``write_single_file`` refuses a key it cannot place, so a model with parts this mapping does not know
fails loudly here instead of loading with random weights later.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from storyboard.core.cli import UserError, run_main

RESNET_PARTS = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
VAE_ATTENTION_PARTS = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                       ("to_out.0.", "proj_out."))
OPEN_CLIP_LAYER_PARTS = ((".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."),
                         (".mlp.fc2.", ".mlp.c_proj."), (".self_attn.out_proj.", ".attn.out_proj."))


def _rename(state: Mapping[str, torch.Tensor], prefixes: Sequence[tuple[str, str, Sequence[tuple[str, str]]]],
            what: str) -> dict[str, torch.Tensor]:
    """Each key through the first (diffusers prefix, original prefix, inner renames) that matches."""
    out = {}
    for key, value in state.items():
        for new, old, parts in prefixes:
            if key.startswith(new):
                rest = key[len(new):]
                for a, b in parts:
                    rest = rest.replace(a, b)
                out[old + rest] = value
                break
        else:
            raise ValueError(f"{what}: no original-layout name for {key}")
    return out


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in the LDM layout (no ``model.diffusion_model.`` yet)."""
    per = int(config["layers_per_block"]) + 1  # resnets of a down level + its downsampler / of an up level
    levels = len(config["block_out_channels"])
    res = RESNET_PARTS
    prefixes: list[tuple[str, str, Sequence[tuple[str, str]]]] = [
        ("conv_in.", "input_blocks.0.0.", ()), ("time_embedding.linear_1.", "time_embed.0.", ()),
        ("time_embedding.linear_2.", "time_embed.2.", ()), ("add_embedding.linear_1.", "label_emb.0.0.", ()),
        ("add_embedding.linear_2.", "label_emb.0.2.", ()), ("conv_norm_out.", "out.0.", ()),
        ("conv_out.", "out.2.", ()), ("mid_block.resnets.0.", "middle_block.0.", res),
        ("mid_block.attentions.0.", "middle_block.1.", ()), ("mid_block.resnets.1.", "middle_block.2.", res),
    ]
    for i in range(levels):
        for j in range(per - 1):
            prefixes += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * per + j}.0.", res),
                         (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * per + j}.1.", ())]
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per}.0.op.", ()))
        for j in range(per):
            prefixes += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * per + j}.0.", res),
                         (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * per + j}.1.", ())]
        behind = 2 if "CrossAttn" in config["up_block_types"][i] else 1
        prefixes.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{i * per + per - 1}.{behind}.conv.", ()))
    return _rename(state, prefixes, "UNet")


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the LDM layout (attention projections as 1x1 convs)."""
    levels = len(config["block_out_channels"])
    short = (("conv_shortcut", "nin_shortcut"),)
    prefixes: list[tuple[str, str, Sequence[tuple[str, str]]]] = []
    for coder in ("encoder", "decoder"):
        prefixes += [(f"{coder}.mid_block.resnets.0.", f"{coder}.mid.block_1.", short),
                     (f"{coder}.mid_block.resnets.1.", f"{coder}.mid.block_2.", short),
                     (f"{coder}.mid_block.attentions.0.", f"{coder}.mid.attn_1.", VAE_ATTENTION_PARTS),
                     (f"{coder}.conv_norm_out.", f"{coder}.norm_out.", ()),
                     (f"{coder}.conv_in.", f"{coder}.conv_in.", ()),
                     (f"{coder}.conv_out.", f"{coder}.conv_out.", ())]
    for i in range(levels):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", short),
                     (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", ()),
                     (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.", short),
                     (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.", ())]
    prefixes += [("quant_conv.", "quant_conv.", ()), ("post_quant_conv.", "post_quant_conv.", ())]
    out = _rename(state, prefixes, "VAE")
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            out[key] = value.reshape(*value.shape, 1, 1)
    return out


def _text_model_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' CLIP text weights with the ``text_model.`` prefix (transformers 5.6+ drops it for
    ``CLIPTextModel``; checkpoints and ``CLIPTextModelWithProjection`` keep it)."""
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in state.items()}


def clip_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP as SD 1.x checkpoints hold it: transformers' names, plus the ``position_ids`` buffer."""
    out = _text_model_keys(state)
    positions = out["text_model.embeddings.position_embedding.weight"].shape[0]
    out.setdefault("text_model.embeddings.position_ids", torch.arange(positions, dtype=torch.int64)[None])
    return out


def open_clip_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower in open_clip's own names (q, k, v stacked into ``in_proj``)."""
    state = _text_model_keys(state)
    out: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        name = key.removeprefix("text_model.")
        if name.startswith("encoder.layers."):
            name = "transformer.resblocks." + name.removeprefix("encoder.layers.")
            for proj in ("q", "k", "v"):
                marker = f".self_attn.{proj}_proj."
                if marker in name:
                    head, kind = name.split(marker)
                    stacked.setdefault(f"{head}.attn.in_proj_{kind}", {})[proj] = value
                    break
            else:
                for a, b in OPEN_CLIP_LAYER_PARTS:
                    name = name.replace(a, b)
                out[name] = value
            continue
        renamed = {"embeddings.token_embedding.weight": "token_embedding.weight",
                   "embeddings.position_embedding.weight": "positional_embedding",
                   "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
        if name not in renamed:
            raise ValueError(f"OpenCLIP text encoder: no original-layout name for {key}")
        out[renamed[name]] = value
    for name, parts in stacked.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _component(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    part = folder / name
    weights = sorted(part.glob("*.safetensors"))
    if len(weights) != 1:
        raise UserError(f"{part}: expected one .safetensors weight file, found {len(weights)}")
    config = json.loads((part / "config.json").read_text(encoding="utf-8"))
    return load_file(str(weights[0])), config


def original_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every weight of the diffusers folder under its original-layout name (SD 1.x, SD 2.x or SDXL)."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    unet, unet_config = _component(folder, "unet")
    vae, vae_config = _component(folder, "vae")
    text, text_config = _component(folder, "text_encoder")
    out = {f"model.diffusion_model.{k}": v for k, v in unet_to_original(unet, unet_config).items()}
    out.update({f"first_stage_model.{k}": v for k, v in vae_to_original(vae, vae_config).items()})
    if "text_encoder_2" in index:  # SDXL: OpenAI CLIP-L, then OpenCLIP bigG with its projection
        text_2, _ = _component(folder, "text_encoder_2")
        out.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in clip_to_original(text).items()})
        out.update({f"conditioner.embedders.1.model.{k}": v for k, v in open_clip_to_original(text_2).items()})
    elif text_config.get("hidden_act") == "gelu":  # SD 2.x: OpenCLIP ViT-H (OpenAI's CLIP uses quick_gelu)
        te = open_clip_to_original(text)
        width = te["token_embedding.weight"].shape[1]
        te.setdefault("text_projection", torch.eye(width))  # SD 2.x files carry it; diffusers ignores it
        out.update({f"cond_stage_model.model.{k}": v for k, v in te.items()})
    else:
        out.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_to_original(text).items()})
    return out


def write_single_file(folder: str | Path, out: str | Path, *, half: bool = False,
                      extra: Mapping[str, object] | None = None) -> Path:
    """Write ``folder`` as one original-layout file: ``.safetensors``, or ``.ckpt`` (a plain
    ``{"state_dict": ...}`` that ``torch.load(..., weights_only=True)`` reads, plus ``extra`` entries)."""
    out = Path(out)
    state = original_state_dict(folder)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        save_file(state, str(out), metadata={"format": "pt"})
    elif out.suffix in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": state, **(extra or {})}, out)
    else:
        raise UserError(f"--out {out}: name a .safetensors or .ckpt file")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storyboard.devkit.single_file",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a diffusers SD 1.x / 2.x / SDXL folder")
    parser.add_argument("--out", type=Path, required=True, help="the file to write (.safetensors or .ckpt)")
    parser.add_argument("--half", action="store_true", help="store fp16 weights (as most published files are)")
    args = parser.parse_args(argv)
    path = write_single_file(args.model, args.out, half=args.half)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    run_main(main)
