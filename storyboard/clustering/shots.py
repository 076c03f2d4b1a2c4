"""Judging an image's shot size: an OpenCV estimator that needs no weights, and CLIP zero-shot.

Both are ``ShotJudge``s: ``judge(images: list[PIL.Image]) -> list[ShotGuess]``, a guess being a shot
size key from the vocabulary (or None), a score in 0..1 and where it came from. The clustering stage
uses them to name clusters; validation uses them to measure trigger fidelity.

``OpenCVShotEstimator``: the Haar cascades OpenCV ships (frontal face, eyes, full body) measure the
subject, and the size of the face in the frame gives the shot size. Framing rules in head heights
(a close-up shows the head, a medium close-up to mid-chest, a medium shot to the waist, a medium long
shot to the knees, a full shot the whole 7.5-head body, ...) put the face box (about 0.63 of the head's
height for OpenCV's frontal face detector) at a known share of the frame height; the bounds between
neighbouring shot sizes are the geometric means of those shares (``DEFAULT_FACE_BOUNDS``). In order:

1. the largest frontal face at the image's own scale -> face height / frame height;
2. no face: eyes at least 10% of the frame high -> extreme close-up (the face overflows the frame);
3. no face: the image upscaled so that faces down to ~2% of the frame height reach the detector's
   24 px window -> the largest small face;
4. no face: a full body -> its height converted to the face share it implies (x 0.084);
5. nothing -> the widest shot size with a low score (a frame without a visible person).

Uniform borders (letterbox bars, square padding) are trimmed first, so the frame height is the
picture's. ``fit_face_bounds`` re-derives the bounds from labelled data (e.g. the sample generator's
ground truth); ``evaluate`` gives exact and within-one-step accuracy and the confusion matrix.

``python -m storyboard.devkit.shot_eval --sample-data DIR [--out DIR]`` measures the estimator on the sample
generator's ground truth (or ``--composites N`` on real faces composited at known shot sizes).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from storyboard.core.cli import UserError, format_table
from storyboard.core.vocabulary import Vocabulary, load_vocabulary

# Typical frame height of each shot size in head heights (top of the head to the chin), from the
# framing rules: an extreme close-up shows half a head, a close-up the head and neck, a medium close-up
# to mid-chest, a medium shot to the waist, a medium long shot to the knees, a full shot the 7.5-head
# body with room around it, a long shot the body at ~40% of the frame, an extreme long shot at ~15%.
TYPICAL_FRAME_HEADS: dict[str, float] = {
    "extreme_close_up": 0.5, "close_up": 1.4, "medium_close_up": 2.45, "medium": 3.8,
    "medium_long": 6.0, "full": 8.8, "long": 18.0, "extreme_long": 50.0,
}
# OpenCV's frontal-face box is about this many head heights tall: 0.62 measured on the astronaut photo at
# full size, 0.68 on the sample generator's film-still-sized renders; the middle is used.
HAAR_FACE_HEADS = 0.65


def bounds_from_frame_heads(frame_heads: dict[str, float], face_heads: float = HAAR_FACE_HEADS) -> dict[str, float]:
    """Face share bounds between neighbouring shot sizes: geometric means of their typical face shares."""
    keys = list(frame_heads)
    shares = [face_heads / frame_heads[k] for k in keys]
    bounds = {k: round(math.sqrt(a * b), 4) for k, a, b in zip(keys, shares, shares[1:])}
    bounds[keys[-1]] = 0.0
    return bounds


# Face box height / frame height at the boundary into each shot size, tightest to widest: a face at least
# this share of the frame is this shot size (or tighter).
DEFAULT_FACE_BOUNDS: dict[str, float] = bounds_from_frame_heads(TYPICAL_FRAME_HEADS)
FACE_PER_BODY = 0.63 / (7.5 * 1.25)  # face box height per full-body box (the box has ~25% margin)
EYES_MIN_SHARE = 0.10  # an eye this tall (share of the frame) without a face means an extreme close-up
MEASURE_VERSION = 2  # bump when ``measure`` changes, so cached measurements are redone


@dataclass
class ShotGuess:
    """One judgement: ``shot_size`` (a vocabulary key, or None), ``score`` 0..1, ``source`` (how)."""

    shot_size: str | None
    score: float
    source: str
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"shot_size": self.shot_size, "score": round(float(self.score), 4), "source": self.source,
                **self.details}


class ShotJudge(Protocol):
    """Anything that can say which shot size each image is."""

    name: str

    def judge(self, images: Sequence) -> list[ShotGuess]:  # images: PIL.Image.Image
        ...


# --------------------------------------------------------------------------------------------
# The OpenCV estimator
# --------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """What the detectors saw: ``kind`` face / eyes / body / none, and the face share it implies."""

    kind: str
    ratio: float | None = None  # face height / frame height (for body: the face share implied)
    box: tuple[int, int, int, int] | None = None  # x, y, w, h in the picture
    frame: tuple[int, int, int, int] | None = None  # the picture's content box after trimming borders

    def to_json(self) -> dict:
        return {"kind": self.kind, "ratio": self.ratio, "box": list(self.box) if self.box else None,
                "frame": list(self.frame) if self.frame else None}

    @classmethod
    def from_json(cls, value: dict) -> Measurement:
        box, frame = value.get("box"), value.get("frame")
        return cls(value["kind"], value.get("ratio"), tuple(box) if box else None, tuple(frame) if frame else None)


def trim_uniform_borders(gray: np.ndarray, tolerance: float = 3.0) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) inside pairs of flat-colour bars (letterbox top and bottom, centred
    padding left and right)."""
    h, w = gray.shape
    g = gray.astype(np.float32)

    def run(lines: Iterable[np.ndarray]) -> int:
        count, ref = 0, None
        for line in lines:
            if line.std() > tolerance:
                break
            mean = float(line.mean())
            ref = mean if ref is None else ref
            if abs(mean - ref) > tolerance:
                break
            count += 1
        return count

    top = run(g[i] for i in range(h))
    if top >= h - 1:
        return 0, 0, w, h  # a flat picture: nothing to trim
    bottom = run(g[h - 1 - i] for i in range(h))
    left = run(g[:, i] for i in range(w))
    right = run(g[:, w - 1 - i] for i in range(w))
    # Bars come in pairs (letterbox, centred padding); a flat shirt filling the bottom is not a bar.
    top, bottom = _paired(top, bottom, h)
    left, right = _paired(left, right, w)
    x0, y0, x1, y1 = left, top, w - right, h - bottom
    if x1 - x0 < w // 4 or y1 - y0 < h // 4:
        return 0, 0, w, h
    return x0, y0, x1, y1


def _paired(a: int, b: int, size: int) -> tuple[int, int]:
    """Keep two opposite bars only when both exist and are about the same size."""
    if min(a, b) >= 2 and abs(a - b) <= max(2, 0.1 * max(a, b)) and a + b < size:
        return a, b
    return 0, 0


SKIN_MIN_SHARE = 0.25  # share of a colour face box's centre that must be skin-coloured


def is_colourful(rgb: np.ndarray) -> bool:
    """False for greyscale and near-greyscale pictures (pencil storyboards, black-and-white stills)."""
    small = rgb[:: max(1, rgb.shape[0] // 128), :: max(1, rgb.shape[1] // 128)]
    return float(cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2HSV)[..., 1].mean()) > 25


def skin_share(rgb: np.ndarray, box) -> float:
    """Share of skin-coloured pixels (a broad YCrCb range) in the middle of ``box`` (x, y, w, h)."""
    x, y, w, h = (int(round(v)) for v in box)
    crop = rgb[max(0, y + h // 5): max(0, y + 4 * h // 5), max(0, x + w // 5): max(0, x + 4 * w // 5)]
    if crop.size == 0:
        return 0.0
    ycc = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[..., 1], ycc[..., 2]
    return float(((cr >= 133) & (cr <= 180) & (cb >= 77) & (cb <= 135)).mean())


def eye_pair(eyes) -> tuple | None:
    """Two eye boxes side by side (similar size, about level, apart): the largest such pair, else None."""
    boxes = sorted((tuple(int(v) for v in b) for b in eyes), key=lambda b: -b[3])
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if max(a[3], b[3]) > 1.5 * min(a[3], b[3]):
                continue
            dy = abs((a[1] + a[3] / 2) - (b[1] + b[3] / 2))
            dx = abs((a[0] + a[2] / 2) - (b[0] + b[2] / 2))
            if dy < 0.5 * max(a[3], b[3]) and 0.8 * max(a[2], b[2]) < dx < 4 * max(a[2], b[2]):
                return a, b
    return None


def pair_box(pair) -> tuple[int, int, int, int]:
    (ax, ay, aw, ah), (bx, by, bw, bh) = pair
    x0, y0 = min(ax, bx), min(ay, by)
    return x0, y0, max(ax + aw, bx + bw) - x0, max(ay + ah, by + bh) - y0


class OpenCVShotEstimator:
    """Shot size from the size of the subject's face (see the module doc). Needs no weights."""

    name = "opencv"

    def __init__(self, vocabulary: Vocabulary | None = None, bounds: dict[str, float] | None = None,
                 min_neighbors: int = 5, use_body: bool = True):
        self.vocabulary = vocabulary or load_vocabulary()
        self.order = [t.key for t in self.vocabulary.shot_sizes]
        bounds = dict(bounds or DEFAULT_FACE_BOUNDS)
        unknown = [k for k in self.order if k not in bounds]
        if unknown:
            raise UserError(f"the OpenCV shot estimator has no face-size bound for shot size(s) {', '.join(unknown)}; "
                            f"give bounds for every shot size of your vocabulary (--estimator-bounds JSON)")
        self.bounds = {k: float(bounds[k]) for k in self.order}
        self.min_neighbors = min_neighbors
        self.use_body = use_body
        root = Path(cv2.data.haarcascades)
        self._face = self._cascade(root / "haarcascade_frontalface_default.xml")
        self._eyes = self._cascade(root / "haarcascade_eye.xml")
        self._body = self._cascade(root / "haarcascade_fullbody.xml")

    @staticmethod
    def _cascade(path: Path):
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise UserError(f"OpenCV's Haar cascade {path.name} is missing: install opencv-python-headless<5 "
                            f"(OpenCV 5 ships none)")
        return cascade

    @property
    def signature(self) -> str:
        """What a cached measurement depends on (not the bounds: classifying is redone each time)."""
        return f"opencv-haar-v{MEASURE_VERSION}-n{self.min_neighbors}-b{int(self.use_body)}"

    # -- measuring ---------------------------------------------------------------------------
    def measure(self, rgb: np.ndarray, content_box: Sequence[float] | None = None) -> Measurement:
        """Measure the subject. ``content_box`` (x0, y0, x1, y1): the part of ``rgb`` that is the
        picture (e.g. inside the padding a square was made with); None: found by trimming flat bars."""
        gray_full = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        if content_box is not None:
            H, W = gray_full.shape
            x0, y0 = max(0, int(round(content_box[0]))), max(0, int(round(content_box[1])))
            x1, y1 = min(W, int(round(content_box[2]))), min(H, int(round(content_box[3])))
            if x1 - x0 < 8 or y1 - y0 < 8:
                x0, y0, x1, y1 = 0, 0, W, H
        else:
            x0, y0, x1, y1 = trim_uniform_borders(gray_full)
        picture = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        gray = np.ascontiguousarray(gray_full[y0:y1, x0:x1])
        h, w = gray.shape
        frame = (x0, y0, x1, y1)
        colour = is_colourful(picture)
        if not colour:  # a drawing (storyboard sketch): soften hatching and pencil grain for the cascades
            gray = cv2.GaussianBlur(gray, (0, 0), float(np.clip(1.5 * h / 480, 0.8, 2.5)))

        def found(kind: str, box, scale: float = 1.0, ratio: float | None = None) -> Measurement:
            bx, by, bw, bh = (v / scale for v in box)
            return Measurement(kind, (bh / h) if ratio is None else ratio,
                               (int(bx + x0), int(by + y0), int(bw), int(bh)), frame)

        def plausible(boxes, scale: float = 1.0) -> list:
            """Faces in a colour picture must show skin (a face-shaped bubble or window grid does not)."""
            boxes = [tuple(int(v) for v in b) for b in boxes]
            if not colour:
                return boxes
            return [b for b in boxes if skin_share(picture, tuple(v / scale for v in b)) >= SKIN_MIN_SHARE]

        faces = plausible(self._face.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                                      minSize=(24, 24)))
        face = max(faces, key=lambda b: b[3]) if faces else None
        # Two eyes at least a tenth of the frame high: an extreme close-up, whose face overflows the
        # frame (a "face" found then is a false one between them, unless it dwarfs the eyes).
        if face is None or face[3] < 0.62 * h:
            eye_min = max(12, int(EYES_MIN_SHARE * h), int(0.6 * face[3]) if face is not None else 0)
            eyes = self._eyes.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                               minSize=(eye_min, eye_min))
            pair = eye_pair(eyes)
            if pair is not None and (not colour or skin_share(picture, pair_box(pair)) >= SKIN_MIN_SHARE / 2):
                return found("eyes", max(pair, key=lambda b: b[3]))
        if face is not None:
            return found("face", face)

        # Faces smaller than the cascade's 24 px window: look again on an enlarged copy, down to faces
        # 1.8% of the frame high (a long shot's; smaller ones count as an extreme long shot anyway).
        scale = min(4.0, 24.0 / (0.018 * h), 2400.0 / max(h, w))
        if scale > 1.2:
            big = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            limit = max(25, int(26 * scale))  # only faces too small for the first pass
            small = plausible(self._face.detectMultiScale(big, scaleFactor=1.1, minNeighbors=self.min_neighbors + 1,
                                                          minSize=(24, 24), maxSize=(limit, limit)), scale)
            if small:
                return found("face", max(small, key=lambda b: b[3]), scale)

        if self.use_body:
            bodies = self._body.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(14, 28))
            if len(bodies):
                body = max(bodies, key=lambda b: b[3])
                return found("body", body, ratio=body[3] / h * FACE_PER_BODY)
        return Measurement("none", None, None, frame)

    # -- classifying ----------------------------------------------------------------------------
    def classify(self, m: Measurement) -> ShotGuess:
        details = {"face_ratio": None if m.ratio is None else round(float(m.ratio), 4), "detector": m.kind}
        if m.kind == "eyes":
            return ShotGuess(self.order[0], 0.5, "opencv:eyes", details)
        if m.kind == "none" or m.ratio is None:
            return ShotGuess(self.order[-1], 0.15, "opencv:no-person", details)
        key, score = self.shot_for_ratio(m.ratio)
        if m.kind == "body":
            score *= 0.7
        return ShotGuess(key, score, f"opencv:{m.kind}", details)

    def shot_for_ratio(self, ratio: float) -> tuple[str, float]:
        """The shot size whose face-share band holds ``ratio``, and a score: 1 in the middle of the band
        (in log scale), 0.5 at its edge."""
        lows = [self.bounds[k] for k in self.order]
        for i, key in enumerate(self.order):
            if ratio >= lows[i]:
                high = lows[i - 1] if i > 0 else None
                low = lows[i]
                if high is None or low <= 0:  # open-ended band: confidence from the distance to its one edge
                    edge = low if low > 0 else high
                    if edge is None:
                        return key, 0.5
                    d = abs(math.log(max(ratio, 1e-6) / edge))
                    return key, float(min(1.0, 0.5 + d / 1.4))
                half = math.log(high / low) / 2
                d = min(math.log(ratio / low), math.log(high / max(ratio, 1e-9)))
                return key, float(min(1.0, 0.5 + 0.5 * d / half)) if half > 0 else 0.5
        return self.order[-1], 0.5

    def judge_array(self, rgb: np.ndarray) -> ShotGuess:
        return self.classify(self.measure(rgb))

    def judge(self, images) -> list[ShotGuess]:
        return [self.judge_array(np.asarray(img.convert("RGB"))) for img in images]


def fit_face_bounds(measurements: Sequence[Measurement], labels: Sequence[str], order: Sequence[str],
                    base: dict[str, float] | None = None) -> dict[str, float]:
    """Bounds re-derived from labelled measurements: between neighbouring shot sizes, the geometric mean
    of their median face shares (faces only). Shot sizes without enough data keep ``base``'s bound."""
    base = dict(base or DEFAULT_FACE_BOUNDS)
    medians: dict[str, float] = {}
    for key in order:
        ratios = [m.ratio for m, lab in zip(measurements, labels) if lab == key and m.kind == "face" and m.ratio]
        if len(ratios) >= 2:
            medians[key] = float(np.median(ratios))
    bounds = {k: base[k] for k in order}
    for tight, wide in zip(order, order[1:]):
        if tight in medians and wide in medians and medians[tight] > medians[wide]:
            bounds[tight] = math.sqrt(medians[tight] * medians[wide])
    # keep them decreasing tightest -> widest
    for i in range(len(order) - 2, -1, -1):
        bounds[order[i]] = max(bounds[order[i]], bounds[order[i + 1]] * 1.01) if bounds[order[i + 1]] > 0 \
            else bounds[order[i]]
    return bounds


# --------------------------------------------------------------------------------------------
# CLIP zero-shot
# --------------------------------------------------------------------------------------------
ZERO_SHOT_TEMPLATES = (
    "a {} of a person",
    "a film still, {}",
    "a storyboard frame, {}",
    "a {} photo",
)


class ClipZeroShotJudge:
    """CLIP's text tower against prompts built from the shot vocabulary (prompt ensembling over
    ``templates`` x each shot's English name and spellings); the best match wins."""

    name = "clip-zero-shot"

    def __init__(self, model, tokenizer, vocabulary: Vocabulary | None = None, preprocess=None, device=None,
                 templates: Sequence[str] = ZERO_SHOT_TEMPLATES):
        self.model = model
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary or load_vocabulary()
        self.order = [t.key for t in self.vocabulary.shot_sizes]
        self.device = device or next(model.parameters()).device
        if preprocess is None:
            cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
            preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        self.preprocess = preprocess
        self.templates = tuple(templates)
        prompts, owners = [], []
        for term in self.vocabulary.shot_sizes:
            for spelling in dict.fromkeys([term.name, *term.en[:2]]):
                for template in self.templates:
                    prompts.append(template.format(spelling))
                    owners.append(term.key)
        with torch.inference_mode():
            tokens = tokenizer(prompts).to(self.device)
            feats = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu().numpy()
        owners_arr = np.asarray(owners)
        classes = np.stack([feats[owners_arr == key].mean(0) for key in self.order])
        self.text_features = classes / np.linalg.norm(classes, axis=1, keepdims=True)
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.exp().item()) if scale is not None else 100.0
        self.prompts = prompts

    @classmethod
    def from_clip(cls, clip, vocabulary: Vocabulary | None = None) -> ClipZeroShotJudge:
        """From ``clip.ClipModel``."""
        return cls(clip.model, clip.tokenizer, vocabulary, clip.preprocess, clip.device)

    def probabilities(self, image_features: np.ndarray) -> np.ndarray:
        """(n, shot sizes) softmax over the shot sizes for normalised image features."""
        logits = self.logit_scale * np.asarray(image_features, np.float32) @ self.text_features.T
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def judge_features(self, image_features: np.ndarray) -> list[ShotGuess]:
        probs = self.probabilities(image_features)
        return [ShotGuess(self.order[int(row.argmax())], float(row.max()), self.name) for row in probs]

    def judge(self, images) -> list[ShotGuess]:
        if not images:
            return []
        with torch.inference_mode():
            batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images]).to(self.device)
            feats = torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1).cpu().numpy()
        return self.judge_features(feats)


# --------------------------------------------------------------------------------------------
# Measuring a judge
# --------------------------------------------------------------------------------------------
@dataclass
class ShotEvaluation:
    """Exact and within-one-step accuracy on the ordered shot scale, and the confusion matrix
    (rows: truth, columns: prediction, last column: no prediction)."""

    order: list[str]
    truth: list[str]
    predicted: list[str | None]
    name: str = ""

    @property
    def n(self) -> int:
        return len(self.truth)

    def _steps(self) -> list[int | None]:
        pos = {k: i for i, k in enumerate(self.order)}
        return [None if p not in pos else abs(pos[p] - pos[t]) for t, p in zip(self.truth, self.predicted)]

    @property
    def exact(self) -> float:
        return sum(s == 0 for s in self._steps()) / self.n if self.n else 0.0

    @property
    def within_one(self) -> float:
        return sum(s is not None and s <= 1 for s in self._steps()) / self.n if self.n else 0.0

    @property
    def confusion(self) -> np.ndarray:
        pos = {k: i for i, k in enumerate(self.order)}
        m = np.zeros((len(self.order), len(self.order) + 1), dtype=int)
        for t, p in zip(self.truth, self.predicted):
            if t in pos:
                m[pos[t], pos.get(p, len(self.order))] += 1
        return m

    def per_class(self) -> list[tuple[str, int, float]]:
        rows = []
        for key in self.order:
            idx = [i for i, t in enumerate(self.truth) if t == key]
            if idx:
                rows.append((key, len(idx), sum(self.predicted[i] == key for i in idx) / len(idx)))
        return rows

    def table(self) -> str:
        rows = [(k, n, f"{r:.0%}") for k, n, r in self.per_class()]
        rows.append(("all", self.n, f"{self.exact:.0%} exact, {self.within_one:.0%} within one step"))
        return format_table(rows, header=(f"{self.name or 'judge'}: true shot size", "images", "recall"))

    def to_json(self) -> dict:
        return {"name": self.name, "n": self.n, "exact": round(self.exact, 4), "within_one": round(self.within_one, 4),
                "order": self.order, "confusion": self.confusion.tolist(), "confusion_columns": self.order + ["none"],
                "per_class_recall": {k: round(r, 4) for k, _, r in self.per_class()}}


def evaluate(truth: Sequence[str], predicted: Sequence[str | None], order: Sequence[str],
             name: str = "") -> ShotEvaluation:
    return ShotEvaluation(list(order), list(truth), list(predicted), name)
