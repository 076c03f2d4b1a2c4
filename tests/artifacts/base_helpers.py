"""Shared by the base-model tests (tests/artifacts/): which tiny model stands for which family."""
from __future__ import annotations

# tiny folder -> (family, the configuration our tables pick for it, prediction type to ask for)
TINY = {
    "model_sd": ("sd1", "sd15", None),
    "model_sd2": ("sd2", "sd2_v", "v_prediction"),  # the tiny SD 2.x is a v-prediction model (SD 2.1's scheduler)
    "model_sdxl": ("sdxl", "sdxl", None),
}
