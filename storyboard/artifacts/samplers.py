"""One sampler, three names: the diffusers scheduler class, the A1111 WebUI's label (what each PNG's
``parameters`` says) and ComfyUI's ``KSampler`` pair (``sampler_name``, ``scheduler``).

ComfyUI has no PLMS (diffusers' ``PNDMScheduler`` with ``skip_prk_steps``, the SD 1.x default): its
nearest is ``ipndm`` (the improved PNDM: the same linear multistep, warmed up with lower orders
instead of Runge-Kutta steps). No pair reproduces a diffusers image bit for bit (each tool spaces
its timesteps and draws its noise its own way); the pair gives the same kind of sampling with the
same steps, CFG, size and seed. The ComfyUI names are those of its ``comfy/samplers.py``
(``KSampler.SAMPLERS`` / ``SCHEDULERS``), checked against ``data/comfyui_nodes.json``.
"""
from __future__ import annotations

# The base's own scheduler class -> A1111 label (for --scheduler default).
BASE_SCHEDULER_LABELS = {
    "PNDMScheduler": "PLMS", "DDIMScheduler": "DDIM", "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a", "DPMSolverMultistepScheduler": "DPM++ 2M",
    "UniPCMultistepScheduler": "UniPC", "LMSDiscreteScheduler": "LMS", "HeunDiscreteScheduler": "Heun",
}

# A1111 label -> ComfyUI KSampler (sampler_name, scheduler).
COMFYUI_SAMPLERS: dict[str, tuple[str, str]] = {
    "PLMS": ("ipndm", "normal"),
    "DDIM": ("ddim", "ddim_uniform"),
    "Euler": ("euler", "normal"),
    "Euler a": ("euler_ancestral", "normal"),
    "Heun": ("heun", "normal"),
    "LMS": ("lms", "normal"),
    "DPM2": ("dpm_2", "normal"),
    "DPM2 a": ("dpm_2_ancestral", "normal"),
    "DPM++ 2M": ("dpmpp_2m", "normal"),
    "DPM++ 2M Karras": ("dpmpp_2m", "karras"),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", "normal"),
    "DPM++ 2M SDE Karras": ("dpmpp_2m_sde", "karras"),
    "UniPC": ("uni_pc", "normal"),
    "DEIS": ("deis", "normal"),
    "LCM": ("lcm", "sgm_uniform"),
}
FALLBACK = ("euler", "normal")  # a sampler none of the tables knows (a custom scheduler class)


def comfyui_sampler(label: str | None) -> tuple[str, str]:
    """The ComfyUI (sampler_name, scheduler) for an A1111 sampler label."""
    return COMFYUI_SAMPLERS.get(label or "", FALLBACK)


def label_for_class(class_name: str | None) -> str | None:
    """A diffusers scheduler class name -> its A1111 label (None when it has none)."""
    return BASE_SCHEDULER_LABELS.get(class_name or "")
