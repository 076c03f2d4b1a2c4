"""Full-size single-file bases through the path a user's file takes, with random weights.

    python bench/check_single_file_full.py [--configs sd15 sd2_v sdxl] [--work DIR]

No real checkpoint can be downloaded here, so for each shipped configuration
(``storyboard/artifacts/base_configs/``) this writes random fp16 weights in the published shapes as
one original-layout ``.safetensors`` file (``storyboard.devkit.single_file``), then loads it as
``--base-model FILE`` does: ``resolve_base`` with no ``--base-config`` (the family and prediction type
detected from the file, our configuration picked, sizes checked), ``load_base_pipeline`` (the tokenizer
built offline, ``from_single_file`` with a local config) with every socket connection refused and
counted. Every tensor of the loaded pipeline is compared with the one written (each is regenerated
from its name's seed, so nothing is held twice in memory), and one denoising step runs at 64 px.

The SD 2.x 768-v file's last output attention gets a ``norm1.bias`` spread of 0.2, as the released
v-prediction models have it, so ComfyUI's rule (``storyboard.artifacts.base_file``) has to pick
``sd2_v``. Memory: about twice the file (written, then loaded); SDXL's file is 6.9 GB.
"""
from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storyboard.core.cli import format_table, run_main

CONFIGS = ("sd15", "sd2_v", "sdxl")
FAMILY = {"sd15": "sd1", "sd2": "sd2", "sd2_v": "sd2", "sdxl": "sdxl"}
# output_blocks.11.1.transformer_blocks.0.norm1.bias in diffusers' names: given the released 768-v
# models' spread in the sd2_v file, which ComfyUI's rule reads
V_CUE = "unet.up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias"


def _value(name: str, shape, dtype, config: str):
    """The random tensor of ``name``: the same every time it is asked for."""
    import torch

    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64)[None]
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    spread = 0.2 if (config == "sd2_v" and name == V_CUE) else 0.02
    return (torch.randn(tuple(shape), generator=generator) * spread).to(dtype)


def _meta_parts(config: str) -> dict:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from storyboard.artifacts.base_model import CONFIGS_DIR

    root = CONFIGS_DIR / config
    with init_empty_weights():
        parts = {"unet": UNet2DConditionModel.from_config(json.loads((root / "unet/config.json").read_text())),
                 "vae": AutoencoderKL.from_config(json.loads((root / "vae/config.json").read_text())),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))}
        if (root / "text_encoder_2").is_dir():
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    return parts


def write_file(config: str, path: Path) -> tuple[float, int]:
    """The random model of ``config`` as one original-layout file; (seconds, tensors)."""
    import torch
    from safetensors.torch import save_file

    from storyboard.artifacts.base_model import CONFIGS_DIR
    from storyboard.devkit import single_file as sf

    started = time.perf_counter()
    parts = _meta_parts(config)
    state = {part: {f"{part}.{k}": _value(f"{part}.{k}", v.shape, torch.float16, config)
                    for k, v in m.state_dict().items()} for part, m in parts.items()}
    count = sum(len(s) for s in state.values())
    strip = {part: {k.split(".", 1)[1]: v for k, v in s.items()} for part, s in state.items()}
    out = {f"model.diffusion_model.{k}": v for k, v in sf.unet_to_original(
        strip["unet"], json.loads((CONFIGS_DIR / config / "unet/config.json").read_text())).items()}
    out.update({f"first_stage_model.{k}": v for k, v in sf.vae_to_original(
        strip["vae"], json.loads((CONFIGS_DIR / config / "vae/config.json").read_text())).items()})
    if config == "sdxl":
        out.update({f"conditioner.embedders.0.transformer.{k}": v
                    for k, v in sf.clip_to_original(strip["text_encoder"]).items()})
        out.update({f"conditioner.embedders.1.model.{k}": v
                    for k, v in sf.open_clip_to_original(strip["text_encoder_2"]).items()})
    elif config.startswith("sd2"):
        te = sf.open_clip_to_original(strip["text_encoder"])
        te["text_projection"] = torch.eye(te["token_embedding.weight"].shape[1], dtype=torch.float16)
        out.update({f"cond_stage_model.model.{k}": v for k, v in te.items()})
    else:
        out.update({f"cond_stage_model.transformer.{k}": v
                    for k, v in sf.clip_to_original(strip["text_encoder"]).items()})
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return time.perf_counter() - started, count


def check(config: str, work: Path) -> dict:
    import torch

    from storyboard.artifacts.base_load import load_base_pipeline
    from storyboard.artifacts.base_model import base_fingerprint, resolve_base

    path = work / f"{config}-random.safetensors"
    write_s, written = write_file(config, path)
    started = time.perf_counter()
    fingerprint = base_fingerprint(path)
    hash_s = time.perf_counter() - started

    attempts: list[str] = []
    real_connect = socket.socket.connect

    def refuse(self, address):
        attempts.append(str(address))
        raise OSError("network access attempted")

    socket.socket.connect = refuse
    try:
        started = time.perf_counter()
        base = resolve_base(path, families=(FAMILY[config],))
        pipe = load_base_pipeline(base, dtype=torch.float16)
        load_s = time.perf_counter() - started
    finally:
        socket.socket.connect = real_connect
    differ, compared = [], 0
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, part, None)
        if model is None:
            continue
        for name, tensor in model.state_dict().items():
            expected = _value(f"{part}.{name}", tensor.shape, tensor.dtype, config)
            compared += 1
            if tensor.is_meta or not torch.equal(tensor, expected):
                differ.append(f"{part}.{name}")
    step = "ok"
    try:
        pipe.set_progress_bar_config(disable=True)
        latents = pipe("a man walking, full shot", num_inference_steps=1, width=64, height=64, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
        step = "ok" if torch.isfinite(latents.float()).all() else "not finite"
    except (RuntimeError, NotImplementedError) as exc:
        step = f"failed: {str(exc).splitlines()[0][:60]}"
    size = path.stat().st_size
    path.unlink()
    return {"config": config, "detected": f"{base.label}, {base.prediction_type} -> {base.config_name}",
            "file_gb": round(size / 1e9, 2),
            "write_s": round(write_s, 1), "sha256_s": round(hash_s, 1), "load_s": round(load_s, 1),
            "tensors_written": written, "tensors_compared": compared, "differing": len(differ),
            "first_differing": differ[:3], "network_attempts": len(attempts), "one_step": step,
            "fingerprint": fingerprint[:19],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/storyboard_single_file"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for config in args.configs:
        row = check(config, args.work)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(format_table([(r["config"], r["detected"], r["write_s"], r["sha256_s"], r["load_s"],
                         f"{r['tensors_compared']}/{r['tensors_written']}", r["differing"], r["network_attempts"],
                         r["one_step"], r["peak_rss_gb"]) for r in rows],
                       header=("config", "detected", "write s", "sha256 s", "load s", "tensors", "differing",
                               "network", "1 step 64 px", "peak RSS GB")))
    return 0


if __name__ == "__main__":
    run_main(main)
