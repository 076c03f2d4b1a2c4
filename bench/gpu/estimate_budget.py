"""The device-time budget of ``run_checks.sh`` on the H200, derived from what this (CPU) machine measures
and from arithmetic, with the safety margins written out. Run it where you change the GPU check:

    python bench/gpu/estimate_budget.py [--work /tmp/storyboard_gpu]    # ~3 min on 2 CPU cores

What is measured here, on the CPU: the CPU seconds of importing the libraries, of building the random
SD1.5 folder and of loading it (the H200 host runs these on its own CPU, so they carry over; credit is
taken for none of its 16 cores). What is counted, not timed: the floating-point work of one training
step and one inference call (``torch.utils.flop_counter`` on meta tensors, so nothing is computed),
turned into H200 seconds at an effective rate far below the chip's (about 790 TFLOP/s of bf16 matrix
work): eager PyTorch reaches 30-80 TFLOP/s on SD1.5's UNet at these batch sizes (group norms, SiLU and
attention at 4,096 tokens are memory-bound), and the budget assumes ``EFFECTIVE_TFLOPS``. Fixed costs
per run (CUDA context, cuDNN's first calls, moving weights) are budgeted at ``RUN_OVERHEAD_S``.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

EFFECTIVE_TFLOPS = 25.0  # assumed H200 rate for SD1.5 in eager bf16/fp16 at batch 4-8 (real: 30-80)
RUN_OVERHEAD_S = 4.0  # per bench run on the GPU: weights to the device, first kernels, allocator
MARGIN = 1.5  # on every estimate below


def cpu_seconds(code: str) -> float:
    """User + system CPU seconds of ``python -c code`` (a fresh process: imports included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def flops() -> dict:
    """GFLOP per 512-px image: UNet forward, UNet backward to its input (LoRA: frozen weights), VAE
    encoder, VAE decoder, text encoder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from sd15_random import SD15_TEXT, SD15_UNET, SD15_VAE
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
        latents, hidden = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
        image, ids, t = torch.randn(1, 3, 512, 512), torch.zeros(1, 77, dtype=torch.long), torch.tensor([10])
    for model in (unet, vae, text):
        model.requires_grad_(False)

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    forward = count(lambda: unet(latents, t, hidden).sample)
    grad_input = latents.clone().requires_grad_(True)
    both = count(lambda: unet(grad_input, t, hidden).sample.sum().backward())
    return {"unet_fwd": forward, "unet_bwd": both - forward, "vae_enc": count(lambda: vae.encode(image)),
            "vae_dec": count(lambda: vae.decode(latents)), "text": count(lambda: text(ids))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/storyboard_gpu"))
    args = parser.parse_args(argv)
    repo = str(BENCH.parent)
    setup = f"import sys; sys.path[:0] = [{str(BENCH)!r}, {repo!r}]\n"
    imports = cpu_seconds("import torch, diffusers, transformers, peft, accelerate; import storyboard.train.loop")
    started = time.time()
    build = cpu_seconds(setup + f"from sd15_random import build_random_sd15; build_random_sd15({str(args.work)!r} + "
                                "'/sd15_random')")
    build_wall = time.time() - started
    folder = str(args.work / "sd15_random")
    load = cpu_seconds(setup + "import torch; from diffusers import StableDiffusionPipeline as P; "
                               f"P.from_pretrained({folder!r}, dtype=torch.bfloat16)") - imports
    f = flops()
    rate = EFFECTIVE_TFLOPS * 1e3  # GFLOP/s
    ours_step = 4 * (f["unet_fwd"] + f["unet_bwd"] + f["text"]) / rate  # batch 4, latents cached
    base_step = ours_step + 4 * f["vae_enc"] / rate  # + the VAE every step
    call = 30 * 8 * f["unet_fwd"] / rate + 4 * f["vae_dec"] / rate  # 30 steps, batch 4 with CFG, decode 4
    print(f"measured here (CPU seconds): imports {imports:.1f}, random SD1.5 build {build:.1f} "
          f"({build_wall:.0f} s wall), SD1.5 load {load:.1f}")
    print("GFLOP per 512 px image: " + ", ".join(f"{k} {v:.0f}" for k, v in f.items()))
    print(f"H200 at {EFFECTIVE_TFLOPS:.0f} TFLOP/s effective: our step (batch 4) {ours_step:.2f} s, baseline step "
          f"{base_step:.2f} s, one 30-step inference call (batch 4, CFG) {call:.1f} s")
    run = RUN_OVERHEAD_S + load
    train = imports + 10 * (run + 10 * (ours_step + base_step) / 2)  # 5 rows x 2 repeats, 10 steps each
    infer = imports + 3 * load + 10 * call  # 3 sides loaded; 3 warm-ups + 2 x 3 timed calls + the control
    rows = [("wheels + environment", 25.0), ("build random SD1.5 + checkpoint", build + 2 * load),
            ("bench_train (5 rows x 2 repeats, batch 4, 10 steps)", train),
            ("bench_inference --full (3 sides, 2 repeats)", infer)]
    total = 0.0
    for name, seconds in rows:
        total += seconds * MARGIN
        print(f"  {name}: {seconds:.0f} s estimated, {seconds * MARGIN:.0f} s with the x{MARGIN} margin")
    print(f"  total of these: {total:.0f} s; the rest of the 345 s cap goes to bench_embed and the fp16 smoke run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
