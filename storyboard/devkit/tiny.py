"""Tiny, randomly initialised stand-ins for the real models, so the whole pipeline runs in tests.

No weights can be downloaded here, and the real checkpoints are gigabytes, so the tests and the demo
run every stage against models that have the real *layout* (same classes, same folder structure,
same tokenizer, same loading calls) but only a few thousand parameters. They produce noise, quickly.

    python -m storyboard.devkit.tiny --out DIR [--seed 0] [--force] [--only model_sd clip]

What is written, and how each form is loaded (exactly the calls a user makes for a real model):

``DIR/model_sd/`` -- a Stable Diffusion 1.5-layout diffusers folder (unet, vae, text_encoder,
tokenizer, scheduler (PNDM, SD1.5's config), feature_extractor, no safety checker), written by
``StableDiffusionPipeline.save_pretrained(..., safe_serialization=True)``::

    StableDiffusionPipeline.from_pretrained(DIR / "model_sd")            # 64x64 px in 4 steps
    CLIPTokenizer.from_pretrained(DIR / "model_sd", subfolder="tokenizer")
    UNet2DConditionModel.from_pretrained(DIR / "model_sd", subfolder="unet")   # etc.

  The tokenizer is the real CLIP BPE (49,408 ids, equal to open_clip's), built offline from the
  vocabulary file open_clip ships. Its folder holds what SD1.5's does (vocab.json, merges.txt,
  special_tokens_map.json, tokenizer_config.json) rather than the tokenizer.json that
  transformers 5 would write, so loading goes through the same path as for a downloaded SD1.5.

``DIR/model_sd2/`` -- the same at SD 2.x's layout: linear attention projections, an OpenCLIP-style
text encoder (GELU), the tokenizer padding with "!" as SD 2.x's does, SD 2.1's DDIM scheduler with
v-prediction. Written as a single original-layout file by ``storyboard.devkit.single_file`` its text
encoder takes open_clip's names (``cond_stage_model.model.*``), so the SD 2.x single-file path is
tested on a real layout.

``DIR/clip/`` -- a tiny open_clip ViT CLIP (image 64 px, embed dim 32, text context 77, the same
49,408-token vocabulary), in two forms holding the same weights:

  * open_clip's "local-dir" form (``open_clip_config.json`` with ``model_cfg`` + ``preprocess_cfg``,
    and ``open_clip_model.safetensors``)::

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{DIR / 'clip'}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{DIR / 'clip'}")

  * "model config + checkpoint path" (``tiny-clip.json`` + ``tiny-clip.safetensors``)::

        open_clip.add_model_config(DIR / "clip" / "tiny-clip.json")      # registers "tiny-clip"
        model, _, preprocess = open_clip.create_model_and_transforms(
            "tiny-clip", pretrained=str(DIR / "clip" / "tiny-clip.safetensors"))
        tokenizer = open_clip.get_tokenizer("tiny-clip")

Each model folder is built in a hidden temp folder beside it and renamed into place at the end, with
a ``.tiny_done`` marker (seed + builder version) inside: a folder that exists is complete. A re-run
with the same seed and version skips it ("already built"); ``--force`` rebuilds. A folder of that
name *without* the marker is not ours (it may be a real checkpoint) and is never replaced.

To add a tiny model: write ``build_tiny_x(folder, seed)`` that fills an empty ``folder``, and add one
``TinyModel`` line to ``BUILDERS``; ``--only`` and the skip/marker logic come with it.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import safetensors.torch
import torch
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from open_clip.model import set_model_preprocess_cfg
from open_clip.push_to_hf_hub import save_config_for_hf
from open_clip.transform import PreprocessCfg
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

from storyboard.core.cli import UserError, run_main
from storyboard.core.clip_tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, OPEN_CLIP_PAD, build_clip_tokenizer
from storyboard.core.records import atomic_dir, atomic_write_json, read_json_object_or_none
from storyboard.devkit import tiny_lineart
from storyboard.devkit.tiny_marian import build_tiny_marian

MARKER = ".tiny_done"
DEFAULT_SEED = 0

# The tiny open_clip architecture. Vision head_width must divide width (open_clip's default, 64,
# would leave a 32-wide tower with zero heads).
TINY_CLIP_NAME = "tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": CLIP_CONTEXT_LENGTH, "vocab_size": CLIP_VOCAB_SIZE, "width": 32, "heads": 4,
                 "layers": 2},
}


# --------------------------------------------------------------------------------------------
# Builders: each fills one empty folder, deterministically from the seed
# --------------------------------------------------------------------------------------------
def _tiny_sd_components(seed: int) -> dict:
    """UNet, VAE, text encoder and scheduler with SD1.5's layout at toy width."""
    # Re-seed before each part so changing one part's shape leaves the others' weights as they were.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,  # 64 px / the VAE's factor 8
        in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        # SD1.5's order (cross-attention blocks outside, plain ones deepest), so LoRA's
        # attention targets (to_q, to_k, to_v, to_out.0) exist under the same kind of names.
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
        # Four blocks give SD's vae_scale_factor of 2 ** 3 = 8, so pixel/latent sizes match a real model.
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_CONTEXT_LENGTH, projection_dim=32,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    # SD1.5's scheduler_config.json, value for value.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    return {
        "unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler,
        "feature_extractor": CLIPImageProcessor(),  # SD1.5 ships one; its defaults are SD's
    }


def _tiny_sd2_components(seed: int) -> dict:
    """SD 2.x's differences at toy width: linear projections in the attention, a GELU (OpenCLIP-style)
    text encoder, SD 2.1's DDIM scheduler with v-prediction."""
    parts = _tiny_sd_components(seed)
    torch.manual_seed(seed)
    parts["unet"] = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(4, 8), use_linear_projection=True, norm_num_groups=32,
    )
    torch.manual_seed(seed)
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_CONTEXT_LENGTH, projection_dim=32,
        hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    ))
    parts["scheduler"] = DDIMScheduler(  # stable-diffusion-2-1's scheduler_config.json
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return parts


def build_tiny_sd(folder: str | Path, seed: int = DEFAULT_SEED, sd2: bool = False) -> Path:
    """Write a tiny SD1.5-layout ``StableDiffusionPipeline`` folder into ``folder`` (SD 2.x's layout
    with ``sd2``)."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as scratch:
        tokenizer = build_clip_tokenizer(scratch, pad_token=OPEN_CLIP_PAD if sd2 else "<|endoftext|>")
        pipe = StableDiffusionPipeline(
            **(_tiny_sd2_components(seed) if sd2 else _tiny_sd_components(seed)), tokenizer=tokenizer,
            safety_checker=None, requires_safety_checker=False,
        )
        if pipe.vae_scale_factor != 8:
            raise RuntimeError(f"tiny VAE scale factor is {pipe.vae_scale_factor}, SD's is 8")
        pipe.save_pretrained(folder, safe_serialization=True)
        # transformers 5 saves tokenizer.json; put back the four files SD1.5 really ships, so the
        # tiny model is loaded through the same code path as a downloaded checkpoint.
        shutil.rmtree(folder / "tokenizer")
        shutil.copytree(scratch, folder / "tokenizer")
    return folder


def build_tiny_sd2(folder: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny SD 2.x-layout ``StableDiffusionPipeline`` folder into ``folder``."""
    return build_tiny_sd(folder, seed, sd2=True)


def build_tiny_open_clip(folder: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the tiny open_clip model into ``folder`` in both loadable forms (see the module doc)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # open_clip's constructors pop keys from the config they get: hand them a copy.
    model = open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CFG))
    preprocess = PreprocessCfg(size=TINY_CLIP_CFG["vision_cfg"]["image_size"])
    set_model_preprocess_cfg(model, asdict(preprocess))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}

    # local-dir form: open_clip's own config writer (the one its Hub upload uses) + its weight name.
    save_config_for_hf(model, folder / "open_clip_config.json", copy.deepcopy(TINY_CLIP_CFG))
    safetensors.torch.save_file(state, str(folder / "open_clip_model.safetensors"))
    # config + checkpoint form: the bare model config is what add_model_config registers.
    atomic_write_json(folder / f"{TINY_CLIP_NAME}.json", TINY_CLIP_CFG)
    safetensors.torch.save_file(state, str(folder / f"{TINY_CLIP_NAME}.safetensors"))
    return folder


def build_tiny_marian_folder(folder: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """A tiny MarianMT ko->en folder (the layout of opus-mt-ko-en) for 02_translate.py --backend marian."""
    build_tiny_marian(Path(folder), seed)
    return Path(folder)


@dataclass(frozen=True)
class TinyModel:
    """One entry of the ``--only`` menu: the folder name under --out and how to fill it."""

    build: Callable[[Path, int], Path]
    # Bump when a builder's output changes, so old builds (same seed) are rebuilt, not reused.
    version: int
    help: str


BUILDERS: dict[str, TinyModel] = {
    "model_sd": TinyModel(build_tiny_sd, 1, "SD1.5-layout diffusers pipeline with the real CLIP tokenizer"),
    "model_sd2": TinyModel(build_tiny_sd2, 1, "SD 2.x-layout diffusers pipeline (OpenCLIP-style text encoder, "
                           "v-prediction)"),
    "clip": TinyModel(build_tiny_open_clip, 1, "open_clip ViT CLIP (local-dir and config+checkpoint forms)"),
    "marian_ko_en": TinyModel(build_tiny_marian_folder, 1,
                              "MarianMT ko->en with a locally trained SentencePiece vocabulary"),
    "model_sdxl": TinyModel(tiny_lineart.build_tiny_sdxl, 2, "SDXL-layout diffusers folder (two text encoders)"),
    "controlnet_lineart_sdxl": TinyModel(tiny_lineart.build_tiny_sdxl_controlnet, 2,
                                         "SDXL ControlNet made from that UNet"),
    "annotators": TinyModel(tiny_lineart.build_tiny_annotators, 1,
                            "controlnet_aux lineart / lineart_anime annotator weights"),
}


# --------------------------------------------------------------------------------------------
# Building into place: skip what is done, never leave half a folder
# --------------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    name: str
    path: Path
    built: bool  # False: an earlier build was reused
    seconds: float


def read_marker(folder: Path) -> dict | None:
    """The marker of a finished build, or None when ``folder`` holds none (or an unreadable one)."""
    return read_json_object_or_none(folder / MARKER)


def _build_one(out: Path, name: str, seed: int, force: bool) -> BuildResult:
    spec = BUILDERS[name]
    final = out / name
    start = time.perf_counter()
    wanted = {"seed": seed, "version": spec.version}
    if final.exists():
        marker = read_marker(final)
        if marker is None:
            # Not built here: could be the user's real checkpoint (the seed's model_sd/ folder).
            raise UserError(f"{final} exists but was not built by storyboard.devkit.tiny; move it away or pick "
                            "another --out")
        if marker == wanted and not force:
            return BuildResult(name, final, False, time.perf_counter() - start)

    # Built beside the target (same file system, so the swap into place is a rename).
    with atomic_dir(final) as tmp:
        spec.build(tmp, seed)
        atomic_write_json(tmp / MARKER, wanted)
    return BuildResult(name, final, True, time.perf_counter() - start)


def build_all(out: str | Path, seed: int = DEFAULT_SEED, force: bool = False,
              only: Sequence[str] | None = None) -> list[BuildResult]:
    """Build every tiny model (or those named in ``only``) under ``out``; reuse finished ones."""
    names = list(only) if only else list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise UserError(f"unknown tiny model {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return [_build_one(out, name, seed, force) for name in dict.fromkeys(names)]


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m storyboard.devkit.tiny",
        description="Build tiny random models with the real models' layout, for tests and the demo. "
        "Runs offline on CPU in seconds.",
        epilog="models: " + "; ".join(f"{name}: {spec.help}" for name, spec in BUILDERS.items()),
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to build into (one sub-folder per model)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the random weights (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a finished build with this seed exists")
    parser.add_argument("--only", nargs="+", choices=list(BUILDERS), metavar="NAME",
                        help=f"build only these ({', '.join(BUILDERS)}); default all")
    args = parser.parse_args(argv)

    for result in build_all(args.out, seed=args.seed, force=args.force, only=args.only):
        if result.built:
            size_mb = _folder_size(result.path) / 1e6
            print(f"{result.name}: built in {result.seconds:.1f} s ({size_mb:.1f} MB) -> {result.path}")
        else:
            print(f"{result.name}: already built (seed {args.seed}) -> {result.path}; --force rebuilds")
    return 0


if __name__ == "__main__":
    run_main(main)
