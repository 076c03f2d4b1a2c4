"""The one text normalisation the metadata stages apply to every string they read.

* Unicode NFC, so a Korean syllable typed as jamo sequences (macOS file names, some crawlers) and
  the precomposed form compare equal;
* full-width ASCII forms (U+FF01..U+FF5E, e.g. ``ＰＡＲＡＳＩＴＥ``, ``（２０１９）``) and the
  ideographic space become plain ASCII;
* every run of whitespace (tabs, newlines, NBSP, zero-width spaces) becomes one space, ends trimmed.

NFKC is deliberately *not* used: it would also rewrite Hangul compatibility jamo (``ㅋㅋ``), circled
digits and other characters the captions legitimately hold. Vocabulary matching applies its own
NFKC internally (``vocabulary.normalize_text``), which is fine for lookups but not for stored text.
"""
from __future__ import annotations

import re
import unicodedata

# Full-width ASCII (U+FF01..U+FF5E) -> ASCII (U+0021..U+007E), and the ideographic space.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FULLWIDTH[0x3000] = 0x20
# Zero-width characters and the BOM count as nothing; \s covers the other spaces.
_INVISIBLE = re.compile("[\u200b\u200c\u2060\ufeff]")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFC, full-width forms to ASCII, one space between words. Idempotent."""
    text = unicodedata.normalize("NFC", text).translate(_FULLWIDTH)
    text = _INVISIBLE.sub("", text)
    return _SPACES.sub(" ", text).strip()


def split_tags(value: str) -> list[str]:
    """``"풀샷, 야외 / 밤"`` -> ``["풀샷", "야외", "밤"]``: the separators people put between tags."""
    return [part for part in (normalize(p) for p in re.split(r"[,，、;；|/／\n]+", value)) if part]
