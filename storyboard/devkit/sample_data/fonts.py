"""The Korean font every drawn text uses: NanumGothic, as the koreanize-matplotlib package ships it."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from storyboard.core.cli import UserError


@lru_cache(maxsize=1)
def font_folder() -> Path:
    # find_spec locates the package without importing it (importing it would configure matplotlib).
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the sample generator draws Korean text with NanumGothic from koreanize-matplotlib; "
                        "install it (pip install koreanize-matplotlib)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "fonts"
    if not (folder / "NanumGothic.ttf").is_file():
        raise UserError(f"NanumGothic.ttf not found in {folder}; reinstall koreanize-matplotlib")
    return folder


@lru_cache(maxsize=64)
def korean_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "NanumGothicBold.ttf" if bold and (font_folder() / "NanumGothicBold.ttf").is_file() else "NanumGothic.ttf"
    return ImageFont.truetype(str(font_folder() / name), size=max(6, int(size)))
