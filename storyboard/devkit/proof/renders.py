"""Ground-truth renders of the world: the sample generator's own scene renderer at the world's size,
each with its known shot size, angle and location, and a caption that never names the shot size.

One image is a pure function of ``(seed, stream, index)``, so the base's renders, the judge's renders
and any later set never overlap, and any image can be drawn again alone. The shot sizes cycle, so
every set is balanced; angle and location are drawn at random.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from storyboard.devkit.proof.config import RenderConfig
from storyboard.devkit.sample_data.backgrounds import Ground
from storyboard.devkit.sample_data.scenery import indoor, outdoor
from storyboard.devkit.sample_data.scenes import DEPTH_OF_FIELD, film_grade, frame_figure, horizon_row, render_scene

# Streams: which independent sequence of images a set draws from.
BASE_STREAM, JUDGE_STREAM, TRAIN_STREAM, EMPTY_STREAM = 1, 2, 3, 4
# Who the caption says is in the picture; the figure is always one woman (the generator's astronaut).
SUBJECTS = ("a woman", "a person", "a woman in a jacket", "someone standing")
# Background features the generator reports, in the words a caption uses (None: not mentioned).
FEATURE_WORDS = {"sky": "sky", "ground": "ground", "river": "a river", "road": "a road", "tree": "trees",
                 "building": "buildings", "wall": "a wall", "floor": "a floor", "window": "a window",
                 "door": "a door", "sofa": "a sofa", "table": "a table", "lamp": "a lamp", "shelf": "a shelf",
                 "rug": "a rug", "cabinet": "a cabinet", "ceiling": "a ceiling", "day": "daylight", "dusk": "dusk",
                 "overcast": "overcast", "haze": "haze"}
# The vocabulary's names for the angles (what validation prompts say), so captions and prompts agree.
ANGLE_WORDS = {"eye_level": "eye level", "high": "high angle", "low": "low angle", "birds_eye": "bird's-eye view",
               "worms_eye": "worm's-eye view", "dutch": "dutch angle"}


@dataclass
class RenderSet:
    images: np.ndarray     # (N, S, S, 3) uint8
    shots: np.ndarray      # (N,) int: index into RenderConfig.shots
    angles: list[str]
    locations: list[str]
    captions: list[str]

    def save(self, path) -> None:
        np.savez_compressed(path, images=self.images, shots=self.shots, angles=np.array(self.angles),
                            locations=np.array(self.locations), captions=np.array(self.captions))

    @classmethod
    def load(cls, path) -> RenderSet:
        with np.load(path) as data:
            return cls(data["images"], data["shots"], data["angles"].tolist(), data["locations"].tolist(),
                       data["captions"].tolist())


def caption_for(rng: np.random.Generator, angle: str, location: str, features: list[str]) -> str:
    """``"eye level, indoor, a woman, a window, a door"``: angle, location, subject, up to two features.
    Never a shot size: that is what the trigger has to teach."""
    words = [FEATURE_WORDS[f] for f in dict.fromkeys(features) if f in FEATURE_WORDS]
    picked = [words[int(i)] for i in rng.permutation(len(words))[: int(rng.integers(0, 3))]] if words else []
    return ", ".join([ANGLE_WORDS[angle], location, SUBJECTS[int(rng.integers(len(SUBJECTS)))], *picked])


def render_one(cfg: RenderConfig, seed: int, stream: int, index: int) -> tuple[np.ndarray, int, str, str, str]:
    """Image ``index`` of ``stream``: (RGB uint8 at cfg.size, shot index, angle, location, caption)."""
    rng = np.random.default_rng([seed, stream, index])
    shot = index % len(cfg.shots)
    angle = cfg.angles[int(rng.integers(len(cfg.angles)))]
    location = cfg.locations[int(rng.integers(len(cfg.locations)))]
    side = cfg.render_size
    scene = render_scene(rng, cfg.shots[shot], angle, location, (side, side))
    rgb = film_grade(rng, scene.rgb)
    if side != cfg.size:
        rgb = cv2.resize(rgb, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)
    return rgb, shot, angle, location, caption_for(rng, angle, location, scene.info.get("features", []))


def empty_scene(rng: np.random.Generator, shot: str, angle: str, location: str, side: int) -> np.ndarray:
    """The background ``render_scene`` would draw for this shot, angle and location, without the figure
    (the same steps, up to the figure): what "no person in the picture" looks like in this world."""
    place = frame_figure(rng, shot, side, side)
    hy = horizon_row(rng, angle, place, side)
    feet_dz = max(place.feet_y - hy, 0.15 * side)
    ground = Ground(side, side, hy, place.center_x + rng.uniform(-0.3, 0.3) * side, place.head_px / feet_dz,
                    place.head_px, place.top_y)
    if location == "outdoor":
        bg, _ = outdoor(rng, ground, angle)
    else:
        close = shot in ("extreme_close_up", "close_up", "medium_close_up")
        bg, _ = indoor(rng, ground, angle, rng.uniform(0.12, 0.3) if close else rng.uniform(0.4, 0.85))
    blur = DEPTH_OF_FIELD.get(shot, 0.0) * side
    if blur > 0.3:
        bg = cv2.GaussianBlur(bg, (0, 0), blur)
    return film_grade(rng, np.clip(bg, 0, 255).astype(np.uint8))


def render_empty_one(cfg: RenderConfig, seed: int, stream: int, index: int) -> tuple[np.ndarray, int, str, str, str]:
    """Image ``index`` of an empty-scene stream; its label is ``len(cfg.shots)``: no shot size."""
    rng = np.random.default_rng([seed, stream, index])
    angle = cfg.angles[int(rng.integers(len(cfg.angles)))]
    location = cfg.locations[int(rng.integers(len(cfg.locations)))]
    rgb = empty_scene(rng, cfg.shots[index % len(cfg.shots)], angle, location, cfg.render_size)
    if cfg.render_size != cfg.size:
        rgb = cv2.resize(rgb, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)
    return rgb, len(cfg.shots), angle, location, f"{ANGLE_WORDS[angle]}, {location}"


def _render_range(args) -> list:
    cfg, seed, stream, start, stop, empty = args
    cv2.setNumThreads(1)  # one image per process at a time: processes, not threads, share the cores
    draw = render_empty_one if empty else render_one
    return [draw(cfg, seed, stream, i) for i in range(start, stop)]


def render_set(cfg: RenderConfig, seed: int, stream: int, count: int, workers: int = 1, start: int = 0,
               empty: bool = False) -> RenderSet:
    """``count`` images of ``stream`` from ``start`` (``empty``: backgrounds without the figure);
    ``workers`` processes share the work."""
    chunk = 250
    jobs = [(cfg, seed, stream, a, min(a + chunk, start + count), empty) for a in range(start, start + count, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_range, jobs))
    else:
        parts = [_render_range(job) for job in jobs]
    rows = [row for part in parts for row in part]
    return RenderSet(np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]), [r[2] for r in rows],
                     [r[3] for r in rows], [r[4] for r in rows])


def shot_renders(cfg: RenderConfig, seed: int, per_shot: int, workers: int = 1, stream: int = TRAIN_STREAM):
    """``per_shot`` fresh renders of every shot size, one ``(index, image, shot key, angle, location,
    caption)`` at a time: what a training set or a crawl is written from."""
    renders = render_set(cfg, seed, stream, per_shot * len(cfg.shots), workers)
    for i, (image, shot, angle, location, caption) in enumerate(zip(renders.images, renders.shots, renders.angles,
                                                                  renders.locations, renders.captions)):
        yield i, image, cfg.shots[int(shot)], angle, location, caption
