"""The device-time budget of ``run_checks.sh`` on the H200, derived from what this (CPU) machine measures
and from arithmetic, with the safety margins written out. Run it where you change the GPU check:

    python bench/gpu/estimate_budget.py [--work /tmp/storyboard_gpu]    # a few minutes on 2 CPU cores

Measured here, on the CPU: the CPU seconds of importing the libraries and of loading the random SD1.5
folder (built here once if missing; the GPU check draws it on the GPU). The H200 host runs these on its
own CPU, so they carry over; credit is taken for none of its 16 cores.

Counted, not timed: the floating-point work of one training step and one inference call
(``torch.utils.flop_counter`` on meta tensors, so nothing is computed), turned into H200 seconds at an
effective rate far below the chip's (about 790 TFLOP/s of bf16 matrix work): eager PyTorch reaches
30-80 TFLOP/s on SD1.5's UNet at these batch sizes (group norms, SiLU and attention at 4,096 tokens
are memory-bound). "expected" assumes ``EXPECTED_TFLOPS``; "worst" half of it and every figure x1.5.
Fixed costs per run (CUDA context, cuDNN's first calls, moving weights) are ``RUN_OVERHEAD_S``; the
wheel install, the embedding bench and the smoke run are budgeted as ``FIXED_S``.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

EXPECTED_TFLOPS = 50.0  # H200, eager SD1.5 in bf16/fp16 at batch 4-8 (public H100 figures: 30-80)
WORST_TFLOPS, WORST_MARGIN = 25.0, 1.5  # the worst case: half that rate, and every figure x1.5
RUN_OVERHEAD_S = 4.0  # per bench run on the GPU: weights to the device, first kernels, allocator
FIXED_S = {"wheels + env": 25.0, "bench_embed": 30.0, "smoke_fp16": 30.0}  # not modelled: small, and last
CAP_S = 345
TRAIN_STEPS = 8  # run_checks.sh: bench_train --steps 8 (2 untimed)


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


def plan_seconds(imports: float, load: float, f: dict, tflops: float) -> dict:
    """Seconds per step of run_checks.sh at ``tflops`` effective."""
    rate = tflops * 1e3  # GFLOP/s
    ours_step = 4 * (f["unet_fwd"] + f["unet_bwd"] + f["text"]) / rate  # batch 4, latents cached
    base_step = ours_step + 4 * f["vae_enc"] / rate  # + the VAE on every batch
    call = 30 * 8 * f["unet_fwd"] / rate + 4 * f["vae_dec"] / rate  # 30 steps, batch 4 with CFG, 4 decodes
    # 5 rows x 2 repeats of TRAIN_STEPS steps; two rows (the baseline's) run the VAE every step
    train = imports + 10 * (RUN_OVERHEAD_S + load) + 2 * TRAIN_STEPS * (3 * ours_step + 2 * base_step)
    # 3 sides loaded; warm-ups of 2 steps; 2 x 3 timed calls; the control (one image)
    infer = imports + 3 * (load + RUN_OVERHEAD_S) + (3 * 2 / 30 + 6 + 0.25) * call
    build = imports + 5.0 + load + 2.0  # draw on the GPU, save 2 GB fp16; the bench LoRA from the saved UNet
    return {"wheels + env": FIXED_S["wheels + env"], "build": build, "bench_inference": infer, "bench_train": train,
            "bench_embed": FIXED_S["bench_embed"], "smoke_fp16": FIXED_S["smoke_fp16"],
            "_steps": (ours_step, base_step, call)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/storyboard_gpu"))
    args = parser.parse_args(argv)
    setup = f"import sys; sys.path[:0] = [{str(BENCH)!r}, {str(BENCH.parent)!r}]\n"
    imports = cpu_seconds("import torch, diffusers, transformers, peft, accelerate; import storyboard.train.loop")
    folder = str(args.work / "sd15_random")
    cpu_seconds(setup + f"from sd15_random import build_random_sd15; build_random_sd15({folder!r})")  # once
    load = cpu_seconds(setup + "import torch; from diffusers import StableDiffusionPipeline as P; "
                               f"P.from_pretrained({folder!r}, dtype=torch.bfloat16)") - imports
    f = flops()
    print(f"measured here (CPU seconds): imports {imports:.1f}, SD1.5 load {load:.1f}")
    print("GFLOP per 512 px image: " + ", ".join(f"{k} {v:.0f}" for k, v in f.items()))
    expected = plan_seconds(imports, load, f, EXPECTED_TFLOPS)
    worst = plan_seconds(imports, load, f, WORST_TFLOPS)
    for name, table in (("expected", expected), ("worst", worst)):
        ours_step, base_step, call = table.pop("_steps")
        tflops = EXPECTED_TFLOPS if name == "expected" else WORST_TFLOPS
        print(f"{name} ({tflops:.0f} TFLOP/s): our step (batch 4) {ours_step:.2f} s, baseline step {base_step:.2f} s, "
              f"one 30-step inference call (batch 4, CFG) {call:.1f} s")
    print(f"{'step':<18}{'expected s':>12}{'worst s':>10}")
    for name in expected:
        print(f"{name:<18}{expected[name]:>12.0f}{worst[name] * WORST_MARGIN:>10.0f}")
    print(f"{'total':<18}{sum(expected.values()):>12.0f}{sum(worst.values()) * WORST_MARGIN:>10.0f}"
          f"   (cap {CAP_S} s: the later steps give way)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
