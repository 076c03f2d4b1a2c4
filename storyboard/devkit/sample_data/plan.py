"""What the sample set holds: one ``ImageSpec`` per image, decided up front from the seed.

Coverage is built in rather than left to chance, so that even a small set (the tests use 24 images)
has every shot size with both stills and conti frames, both locations, every camera angle, every odd
file form (RGBA, L, P, GIF, EXIF-rotated JPEG) and every bubble style.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from storyboard.devkit.sample_data.bubbles import BubbleStyle, style_deck
from storyboard.devkit.sample_data.metadata import FILMS, Film

MIN_COUNT = 16
# save key -> (PIL format, mode as saved, extension)
SAVES = {
    "jpeg": ("JPEG", "RGB", ".jpg"),
    "png": ("PNG", "RGB", ".png"),
    "rgba_png": ("PNG", "RGBA", ".png"),
    "gray_png": ("PNG", "L", ".png"),
    "gray_jpeg": ("JPEG", "L", ".jpg"),
    "palette_png": ("PNG", "P", ".png"),
    "gif": ("GIF", "P", ".gif"),
    "exif_jpeg": ("JPEG", "RGB", ".jpg"),
}
STILL_SIZES = [(480, 270), (640, 360), (512, 384), (400, 300), (640, 272), (560, 315)]
WIDE_SIZES = [(640, 272), (640, 360), (560, 315)]
PORTRAIT_SIZES = [(360, 480), (300, 400)]
CONTI_SIZES = [(480, 360), (400, 300), (512, 384), (640, 400)]
CLOSE_SHOTS = ("close_up", "medium_close_up", "medium")


@dataclass
class ImageSpec:
    index: int
    kind: str                       # still | conti
    shot: str
    angle: str = "eye_level"
    location: str = "outdoor"
    film: Film = FILMS[0]
    size: tuple[int, int] = (480, 270)
    content: tuple[int, int, int, int] = (0, 0, 480, 270)
    save: str = "jpeg"
    path: str = ""
    bubbles: list[BubbleStyle] = field(default_factory=list)
    copy_source: bool = False       # the still that is also stored again under another name

    @property
    def mode(self) -> str:
        return SAVES[self.save][1]


def _slots(count: int, shots: list[str]) -> list[tuple[str, str]]:
    """(shot, kind) pairs: shots cycle evenly; about a third of each shot's images are conti."""
    rounds = math.ceil(count / len(shots))
    pairs = [(shot, "conti" if (r + s) % 3 == 2 else "still") for r in range(rounds) for s, shot in enumerate(shots)]
    return pairs[:count]


def _pick(rng, specs: list[ImageSpec], ok, n: int = 1) -> list[ImageSpec]:
    pool = [s for s in specs if ok(s)]
    return [pool[int(i)] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def _angles(rng, specs: list[ImageSpec]) -> None:
    for spec in specs:
        spec.angle = str(rng.choice(["eye_level", "high", "low"], p=[0.46, 0.27, 0.27]))
    n = max(1, round(len(specs) / 30))
    rare = {"birds_eye": ("medium_long", "full", "long", "extreme_long"), "worms_eye": ("medium_long", "full", "long"),
            "dutch": ("close_up", "medium_close_up", "medium", "medium_long", "full")}
    for angle, shots in rare.items():
        def rare_ok(s, shots=shots):
            return s.shot in shots and s.angle in ("eye_level", "high", "low")

        for spec in _pick(rng, specs, rare_ok, n):
            spec.angle = angle
    for angle in ("high", "low", "eye_level"):
        if not any(s.angle == angle for s in specs):
            _pick(rng, specs, lambda s: s.angle in ("eye_level", "high", "low"))[0].angle = angle


def _locations(rng, specs: list[ImageSpec]) -> None:
    pool = (["indoor", "outdoor"] * len(specs))[: len(specs)]
    for spec, location in zip(specs, rng.permutation(pool)):
        spec.location = str(location)
    # An extreme long shot is mostly a landscape: trade its room for another image's outdoors.
    for spec in specs:
        if spec.shot == "extreme_long" and spec.location == "indoor" and rng.random() < 0.7:
            other = _pick(rng, specs, lambda s: s.shot != "extreme_long" and s.location == "outdoor")
            if other:
                other[0].location, spec.location = "indoor", "outdoor"


def _saves(rng, specs: list[ImageSpec]) -> None:
    """Mostly JPEG/PNG; exactly one EXIF-rotated JPEG, palette PNG, GIF and grey JPEG still, one or two
    RGBA PNGs, one grey JPEG conti; conti frames otherwise grey PNG or colour scans."""
    for spec in specs:
        if spec.kind == "conti":
            spec.save = "gray_png" if rng.random() < 0.7 else "jpeg"
        else:
            spec.save = "jpeg" if rng.random() < 0.75 else "png"
    source = next(s for s in specs if s.kind == "still" and s.film is FILMS[0])
    source.save, source.copy_source = "jpeg", True
    free = lambda s: s.kind == "still" and not s.copy_source and s.save in ("jpeg", "png")
    specials = [("exif_jpeg", lambda s: free(s) and s.shot in CLOSE_SHOTS and s.angle != "dutch"),
                ("rgba_png", free), ("gray_jpeg", free), ("palette_png", free), ("gif", free)]
    if len(specs) >= 40:
        specials.append(("rgba_png", free))
    for save, ok in specials:
        _pick(rng, specs, ok)[0].save = save
    conti = _pick(rng, specs, lambda s: s.kind == "conti", 2)
    conti[0].save = "gray_jpeg"
    if not any(s.save == "gray_png" for s in specs):
        conti[1].save = "gray_png"


def _frames(rng, specs: list[ImageSpec]) -> None:
    """Page size and the content box inside it (conti panel, picture between transparent margins)."""
    portrait = _pick(rng, specs, lambda s: s.kind == "still" and s.save in ("jpeg", "png") and not s.copy_source
                     and s.shot != "extreme_long", 2 if len(specs) >= 24 else 1)
    for spec in specs:
        if spec.kind == "conti":
            w, h = CONTI_SIZES[int(rng.integers(len(CONTI_SIZES)))]
            m, bottom = round(0.035 * min(w, h)), round(0.11 * h)
            spec.size, spec.content = (w, h), (m, m, w - m, h - bottom)
            continue
        sizes = PORTRAIT_SIZES if spec in portrait else WIDE_SIZES if spec.shot == "extreme_long" else STILL_SIZES
        w, h = sizes[int(rng.integers(len(sizes)))]
        spec.size, spec.content = (w, h), (0, 0, w, h)
        if spec.save == "rgba_png":  # letterbox bars, or a margin all round, left transparent
            if rng.random() < 0.5:
                bar = round(h * rng.uniform(0.08, 0.14))
                spec.content = (0, bar, w, h - bar)
            else:
                m = round(min(w, h) * rng.uniform(0.05, 0.09))
                spec.content = (m, m, w - m, h - m)


def _bubbles(rng, specs: list[ImageSpec]) -> None:
    """About 60 % of images get one or two bubbles; the RGBA and EXIF images always do."""
    forced = [s for s in specs if s.save in ("rgba_png", "exif_jpeg")]
    others = [s for s in specs if s not in forced]
    wanted = max(0, round(0.6 * len(specs)) - len(forced))
    chosen = forced + [others[int(i)] for i in rng.choice(len(others), size=min(wanted, len(others)), replace=False)]
    counts = {s.index: 1 + int(rng.random() < 0.3) for s in chosen}
    deck = style_deck(rng, sum(counts.values()))
    for spec in sorted(chosen, key=lambda s: s.index):
        spec.bubbles, deck = deck[: counts[spec.index]], deck[counts[spec.index]:]


def _names(specs: list[ImageSpec]) -> None:
    counters: dict[tuple[str, str], int] = {}
    for spec in specs:
        n = counters[(spec.film.title, spec.kind)] = counters.get((spec.film.title, spec.kind), 0) + 1
        ext = SAVES[spec.save][2]
        if spec.film.still_name.startswith("IMG_") and ext == ".jpg":
            ext = ".JPG"  # a camera-style name with a camera-style extension
        if spec.kind == "conti":
            stem = spec.film.conti_name.format(n=n)
        else:
            stem = f"{spec.film.folder}/{spec.film.still_name.format(n=n)}"
        spec.path = stem + ext


def make_plan(rng: np.random.Generator, count: int, shots: list[str]) -> list[ImageSpec]:
    """Every image of the set, in file order. ``shots`` are the vocabulary's shot-size keys."""
    if count < MIN_COUNT:
        raise ValueError(f"count must be at least {MIN_COUNT}")
    pairs = [_slots(count, shots)[int(i)] for i in rng.permutation(count)]
    specs = [ImageSpec(index=i, kind=kind, shot=shot) for i, (shot, kind) in enumerate(pairs)]
    films = [FILMS[i % len(FILMS)] for i in range(count)]
    for spec, k in zip(specs, rng.permutation(count)):
        spec.film = films[int(k)]
    if not any(s.kind == "still" and s.film is FILMS[0] for s in specs):  # the copied still must exist
        still = next(s for s in specs if s.kind == "still")
        mine = next(s for s in specs if s.film is FILMS[0])
        still.film, mine.film = FILMS[0], still.film
    _angles(rng, specs)
    _locations(rng, specs)
    _saves(rng, specs)
    _frames(rng, specs)
    _bubbles(rng, specs)
    _names(specs)
    return specs
