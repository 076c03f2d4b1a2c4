"""Build the proof world once, cached by its configuration's fingerprint, under a cache root:
``<root>/world-<fingerprint[:12]>/``.

Phases (each skipped when its output is already in the world folder, so an interrupted build resumes):
renders (base + judge sets) -> VAE -> judge (on renders + VAE reconstructions + "nobody" images) ->
base UNet -> SD folder. ``world.json`` is written last: the configuration, fingerprint, seconds per
phase and the judge's held-out accuracy; a folder with it (and the right fingerprint in it) is reused
as it is. The SD folder is ``<world>/model_sd``; the judge file ``<world>/judge/shot_judge.safetensors``.
The device is CUDA when one is present (``device="auto"``), else the CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from storyboard.core.clip_tokenizer import build_clip_tokenizer
from storyboard.core.records import atomic_write_json
from storyboard.core.runtime import resolve_device
from storyboard.devkit.proof.base import build_text_encoder, build_unet, encode_captions, pretrain_unet, save_sd_folder
from storyboard.devkit.proof.config import DONE, PhaseClock, WorldConfig, read_done, world_dir
from storyboard.devkit.proof.judge_training import JUDGE_FILE, JUDGE_REPORT, save_world_judge, train_judge
from storyboard.devkit.proof.renders import BASE_STREAM, EMPTY_STREAM, JUDGE_STREAM, RenderSet, render_set
from storyboard.devkit.proof.vae import encode_latents, latent_scale, random_decodes, reconstruct, train_vae

SD_FOLDER = "model_sd"
JUDGE_FOLDER = "judge"


def _renders(folder: Path, cfg: WorldConfig, workers: int, clock: PhaseClock, log) -> tuple[RenderSet, RenderSet]:
    sets = []
    for name, stream, count in (("base", BASE_STREAM, cfg.render.base_count),
                                ("judge", JUDGE_STREAM, cfg.render.judge_count)):
        path = folder / f"renders_{name}.npz"
        if not path.is_file():
            with clock.phase(f"renders ({name}, {count} images)", log):
                partial = path.with_name(path.stem + ".partial.npz")
                render_set(cfg.render, cfg.seed, stream, count, workers).save(partial)
                partial.replace(path)
        sets.append(RenderSet.load(path))
    return sets[0], sets[1]


def _vae(folder: Path, cfg: WorldConfig, base: RenderSet, device: str, clock: PhaseClock, log):
    path = folder / "vae"
    if not (path / "config.json").is_file():
        with clock.phase(f"VAE ({cfg.vae.steps} steps)", log):
            vae, history = train_vae(base.images, cfg.vae, cfg.seed, device, log)
            vae.register_to_config(scaling_factor=latent_scale(vae, base.images[:1000]))
            vae.save_pretrained(path)
            atomic_write_json(folder / "vae_loss.json", history)
    return AutoencoderKL.from_pretrained(path).eval()


def _judge(folder: Path, cfg: WorldConfig, judge_set: RenderSet, vae, workers: int, clock: PhaseClock, log) -> dict:
    path = folder / JUDGE_FOLDER
    if not ((path / JUDGE_FILE).is_file() or (path / JUDGE_REPORT).is_file()):
        with clock.phase("judge (reconstructions + fit)", log):
            recons = reconstruct(vae, judge_set.images)
            empty = render_set(cfg.render, cfg.seed, EMPTY_STREAM, cfg.render.empty_count, workers, empty=True).images
            noise = random_decodes(vae, max(cfg.render.empty_count // 2, 1), cfg.seed,
                                   cfg.render.size // 2 ** (len(cfg.vae.channels) - 1))
            judge, report = train_judge(judge_set.images, recons, judge_set.shots, list(cfg.render.shots), cfg.judge,
                                        cfg.seed, nobody=(empty, noise))
            save_world_judge(path, judge, report)
    return json.loads((path / JUDGE_REPORT).read_text(encoding="utf-8"))["accuracy"]


def _base(folder: Path, cfg: WorldConfig, base: RenderSet, vae, device: str, clock: PhaseClock, log) -> None:
    if (folder / SD_FOLDER / "model_index.json").is_file():
        return
    with clock.phase(f"base UNet ({cfg.base.steps} steps)", log):
        params = encode_latents(vae, base.images)
        tokenizer = build_clip_tokenizer(folder / "model_tokenizer")  # the same files save_sd_folder writes
        text_encoder = build_text_encoder(cfg.base, cfg.seed)
        hidden = encode_captions(tokenizer, text_encoder, base.captions)
        empty = encode_captions(tokenizer, text_encoder, [""])
        latent_size, channels = params.shape[-1], params.shape[1] // 2
        unet = build_unet(cfg.base, latent_size, channels, cfg.seed)
        ema, history = pretrain_unet(unet, params, hidden, empty, cfg.base, vae.config.scaling_factor, cfg.seed,
                                     device, log)
        unet.load_state_dict(ema)
        partial = folder / f"{SD_FOLDER}.partial"
        save_sd_folder(partial, unet.cpu(), vae, text_encoder)
        shutil.rmtree(folder / SD_FOLDER, ignore_errors=True)  # an unfinished one (no model_index.json)
        partial.replace(folder / SD_FOLDER)
        atomic_write_json(folder / "base_loss.json", history)


def build_world(root: str | os.PathLike, cfg: WorldConfig, workers: int = 1, device: str = "auto",
                log: Callable = print) -> tuple[Path, dict]:
    """The world of ``cfg`` under ``root`` (built, or found finished); returns (folder, world.json)."""
    folder = world_dir(root, cfg)
    done = read_done(folder, cfg)
    if done is not None:
        log(f"[proof] world {folder.name} is cached (built in {sum(done['seconds'].values()):.0f} s on "
            f"{done.get('device', '?')}); reusing it")
        return folder, done
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", cfg.to_dict())
    device = str(resolve_device(device))
    log(f"[proof] building world {folder.name} on {device}")
    clock = PhaseClock()
    started = time.perf_counter()
    base, judge_set = _renders(folder, cfg, workers, clock, log)
    vae = _vae(folder, cfg, base, device, clock, log)
    judge_report = _judge(folder, cfg, judge_set, vae, workers, clock, log)
    _base(folder, cfg, base, vae, device, clock, log)
    done = {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict(), "seconds": clock.seconds,
            "cpu_seconds": clock.cpu, "wall_seconds": round(time.perf_counter() - started, 1), "device": device,
            "torch_threads": torch.get_num_threads(), "judge": judge_report}
    atomic_write_json(folder / DONE, done)
    return folder, done
