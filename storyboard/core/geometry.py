"""The square a finalized image was made into, as a record carries it, and boxes mapped both ways.

The finalize stage (``storyboard.images.squares``) makes every training image a square and stores the
transform in the record as ``square`` (with the upright source's ``source_size``); the clustering stage
reads it back to find the picture inside its padding. The transform is one scale per axis and an
offset, in the square's pixels::

    square_x = source_x * scale[0] + offset[0]       square_y = source_y * scale[1] + offset[1]

``source`` coordinates are those of the upright image (EXIF orientation applied), the same as the
bubble mask's. ``box_to_square`` and ``box_to_source`` apply it both ways.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SquareTransform:
    size: int
    scale: tuple[float, float]
    offset: tuple[float, float]
    source_size: tuple[int, int]  # (width, height)
    fit: str
    pad_fill: str | None = None

    def as_record(self) -> dict:
        # Full precision: JSON keeps a float exactly, and mapping boxes back needs it.
        out = {"fit": self.fit, "size": self.size, "scale": [self.scale[0], self.scale[1]],
               "offset": [self.offset[0], self.offset[1]]}
        if self.pad_fill:
            out["pad_fill"] = self.pad_fill
        return out


def transform_from_record(record: dict) -> SquareTransform:
    """The transform a finalized record carries (``square`` + ``source_size``)."""
    sq = record["square"]
    w, h = record["source_size"]
    return SquareTransform(int(sq["size"]), (float(sq["scale"][0]), float(sq["scale"][1])),
                           (float(sq["offset"][0]), float(sq["offset"][1])), (int(w), int(h)), sq["fit"],
                           sq.get("pad_fill"))


def box_to_square(box, t: SquareTransform) -> list[float]:
    """[x0, y0, x1, y1] in source pixels -> the same box in the square's pixels (may fall outside a crop)."""
    x0, y0, x1, y1 = map(float, box)
    return [x0 * t.scale[0] + t.offset[0], y0 * t.scale[1] + t.offset[1],
            x1 * t.scale[0] + t.offset[0], y1 * t.scale[1] + t.offset[1]]


def box_to_source(box, t: SquareTransform) -> list[float]:
    """[x0, y0, x1, y1] in the square's pixels -> source pixels."""
    x0, y0, x1, y1 = map(float, box)
    return [(x0 - t.offset[0]) / t.scale[0], (y0 - t.offset[1]) / t.scale[1],
            (x1 - t.offset[0]) / t.scale[0], (y1 - t.offset[1]) / t.scale[1]]
