"""Shot clustering, as plain functions on arrays and records (the stage that runs them is
``storyboard.clustering.stage``; the flags' parsing is in ``storyboard.clustering.settings``).

* ``find_duplicates``: exact copies (same bytes) and near-duplicates (cosine similarity of normalised
  CLIP features at or above a threshold) collapse onto one kept image; greedy in a stable order, so
  the kept one is the first (records with a tag label first, then input order).
* ``choose_k`` / ``run_kmeans``: k-means (scikit-learn) with k given or chosen by the silhouette score
  over a range, optionally after PCA; clusters are numbered by size (0 = largest) so numbers are stable.
* ``name_clusters``: each cluster gets a shot size from the first naming path that answers, in the
  order asked for: ``manual`` (a cluster -> label JSON a person wrote after looking at the gallery),
  ``labels`` (the majority of the tag-derived ``shot_size`` labels inside it, if enough are labelled and
  the majority is pure enough), ``zero-shot`` (majority of CLIP zero-shot guesses), ``estimator``
  (majority of the OpenCV estimator's guesses).
* ``balance``: per shot size, downsample to a target count (tag-labelled records kept first, then
  inferred ones nearest their cluster's centre) and optionally repeat small classes up to it.
* ``trigger_text``: ``"<fs_trg>, full shot, eye level, outdoor, ..."`` from a record's text.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from storyboard.core.cli import UserError
from storyboard.core.records import read_json_object
from storyboard.core.vocabulary import Term, Vocabulary


# --------------------------------------------------------------------------------------------
# Duplicates
# --------------------------------------------------------------------------------------------
@dataclass
class Duplicate:
    index: int  # the image dropped
    of: int  # the kept image it repeats
    similarity: float
    exact: bool


def find_duplicates(features: np.ndarray, keys: Sequence[str], order: Sequence[int], threshold: float,
                    block: int = 2048) -> list[Duplicate]:
    """Which images repeat an earlier kept one. ``order`` is the preference order (earlier = kept).
    Exact copies (same content key) always collapse; near-duplicates when cosine >= ``threshold``
    (``threshold`` > 1 turns near-duplicate detection off)."""
    n = len(keys)
    dups: list[Duplicate] = []
    kept_mask = np.zeros(n, bool)
    first_by_key: dict[str, int] = {}
    feats = np.asarray(features, np.float32)
    rank = np.empty(n, int)
    rank[np.asarray(order, int)] = np.arange(n)
    # Candidate pairs above the threshold, block by block (never an n x n matrix in memory).
    candidates: dict[int, list[tuple[int, float]]] = {}
    if threshold <= 1.0 and n > 1:
        block = max(64, min(block, 50_000_000 // n))  # at most ~200 MB of similarities at a time
        for start in range(0, n, block):
            sims = feats[start:start + block] @ feats.T
            rows, cols = np.nonzero(sims >= threshold)
            for r, c in zip(rows.tolist(), cols.tolist()):
                i = start + r
                if i != c and rank[c] < rank[i]:
                    candidates.setdefault(i, []).append((c, float(sims[r, c])))
    for i in order:
        key = keys[i]
        if key in first_by_key:
            dups.append(Duplicate(i, first_by_key[key], 1.0, True))
            continue
        best = None
        for j, sim in candidates.get(i, ()):
            if kept_mask[j] and (best is None or sim > best[1]):
                best = (j, sim)
        if best is not None:
            dups.append(Duplicate(i, best[0], round(best[1], 5), False))
            continue
        kept_mask[i] = True
        first_by_key[key] = i
    return dups


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------
def reduce(features: np.ndarray, pca: int, seed: int) -> tuple[np.ndarray, dict]:
    """Optionally project onto the first ``pca`` principal components (0 = off)."""
    x = np.asarray(features, np.float32)
    if not pca or pca >= x.shape[1]:
        return x, {"pca": None}
    n_components = min(pca, x.shape[0], x.shape[1])
    model = PCA(n_components=n_components, random_state=seed)
    reduced = model.fit_transform(x).astype(np.float32)
    return reduced, {"pca": n_components, "explained_variance": round(float(model.explained_variance_ratio_.sum()), 4)}


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 10):
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)


def choose_k(x: np.ndarray, k_range: tuple[int, int], seed: int, sample: int = 4000) -> tuple[int, dict[int, float]]:
    """The k with the best silhouette score over ``k_range`` (clipped to what the data allows);
    ties go to the smaller k. Fewer than 3 images: k = 1."""
    n = len(x)
    distinct = len(np.unique(np.round(x, 6), axis=0))
    lo, hi = k_range[0], min(k_range[1], n - 1, distinct)
    if n < 3 or hi < 2:
        return 1, {}
    lo = min(lo, hi)
    scores: dict[int, float] = {}
    for k in range(lo, hi + 1):
        labels = _kmeans(x, k, seed, n_init=3).labels_  # the final fit (run_kmeans) uses 10
        if len(set(labels.tolist())) < 2:
            continue
        scores[k] = round(float(silhouette_score(x, labels, sample_size=min(n, sample), random_state=seed)), 5)
    if not scores:
        return 1, {}
    best = max(scores.values())
    return min(k for k, s in scores.items() if s == best), scores


@dataclass
class Clustering:
    labels: np.ndarray  # cluster per row, 0 = the largest cluster
    distances: np.ndarray  # distance to its centre
    centers: np.ndarray
    k: int


def run_kmeans(x: np.ndarray, k: int, seed: int) -> Clustering:
    """k-means; clusters renumbered by size (largest first, ties by lowest first member)."""
    n = len(x)
    if k < 1:
        raise UserError(f"--k must be at least 1 (got {k})")
    if k > n:
        raise UserError(f"--k {k} is larger than the number of images left to cluster ({n})")
    if k == 1:
        center = x.mean(0, keepdims=True)
        return Clustering(np.zeros(n, int), np.linalg.norm(x - center, axis=1), center, 1)
    model = _kmeans(x, k, seed)
    raw = model.labels_
    sizes = Counter(raw.tolist())
    first = {c: int(np.argmax(raw == c)) for c in sizes}
    order = sorted(sizes, key=lambda c: (-sizes[c], first[c]))
    remap = {old: new for new, old in enumerate(order)}
    labels = np.array([remap[c] for c in raw.tolist()], int)
    centers = model.cluster_centers_[order]
    distances = np.linalg.norm(x - centers[labels], axis=1)
    return Clustering(labels, distances, centers, len(order))


def clustering_id(keys: Sequence[str], k: int, seed: int, pca: int, fingerprint: str) -> str:
    """Names one clustering (same images, model, k, seed, PCA -> same clusters), so a hand-written
    label file can be checked against the clustering it was written for."""
    digest = hashlib.sha256(json.dumps([sorted(keys), k, seed, pca, fingerprint]).encode()).hexdigest()
    return digest[:16]


# --------------------------------------------------------------------------------------------
# Naming clusters
# --------------------------------------------------------------------------------------------
@dataclass
class PathAnswer:
    label: str | None
    purity: float | None = None  # share of the evidence that agrees with the label
    n: int = 0  # how much evidence (labelled members, guesses)
    note: str = ""


@dataclass
class ClusterName:
    cluster: int
    size: int
    label: str | None
    source: str | None
    purity: float | None
    answers: dict[str, PathAnswer] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"cluster": self.cluster, "size": self.size, "label": self.label, "source": self.source,
                "purity": self.purity,
                "answers": {p: {"label": a.label, "purity": a.purity, "n": a.n, "note": a.note}
                            for p, a in self.answers.items()}}


def majority(labels: Sequence[str | None]) -> PathAnswer:
    votes = Counter(label for label in labels if label)
    total = sum(votes.values())
    if not total:
        return PathAnswer(None, None, 0)
    # ties: the label seen first among the tied ones in sorted order, so results are deterministic
    top = max(votes.values())
    label = sorted(name for name, c in votes.items() if c == top)[0]
    return PathAnswer(label, round(top / total, 4), total)


def load_manual_labels(path: Path, vocabulary: Vocabulary, k: int, current_id: str) -> dict[int, str]:
    """A person's cluster -> shot size file: ``{"clusters": {"0": "full", "3": "클로즈업", ...}}`` (any
    spelling the vocabulary knows), optionally with the ``clustering_id`` it was written for."""
    data = read_json_object(path, "cluster labels file")
    written_for = data.get("clustering_id")
    if written_for and written_for != current_id:
        raise UserError(f"cluster labels file {path} was written for clustering {written_for}, but this run's "
                        f"clustering is {current_id} (images, model, k, seed or PCA changed, so cluster numbers may "
                        f"mean other clusters): check the new gallery and update the file, or delete its clustering_id")
    table = data.get("clusters", {k_: v for k_, v in data.items() if k_ not in ("clustering_id", "_comment")})
    out: dict[int, str] = {}
    for key, value in table.items():
        try:
            cluster = int(key)
        except (TypeError, ValueError):
            raise UserError(f"cluster labels file {path}: {key!r} is not a cluster number") from None
        if not 0 <= cluster < k:
            raise UserError(f"cluster labels file {path}: cluster {cluster} does not exist (clusters are 0..{k - 1})")
        if value in (None, ""):
            continue
        term = vocabulary.lookup(value, "shot_size")
        if term is None:
            known = ", ".join(t.key for t in vocabulary.shot_sizes)
            raise UserError(f"cluster labels file {path}: cluster {cluster} is labelled {value!r}, "
                            f"not a shot size ({known})")
        out[cluster] = term.key
    return out


def name_clusters(clusters: np.ndarray, k: int, naming: Sequence[str], tags: Sequence[str | None],
                  zero_shot: Sequence[str | None] | None, estimates: Sequence[str | None] | None,
                  manual: dict[int, str] | None, min_purity: float, min_labelled: int) -> list[ClusterName]:
    """One ``ClusterName`` per cluster: every path's answer, and the label of the first path in
    ``naming`` that answers (``labels`` answers only with >= ``min_labelled`` tagged members whose
    majority holds >= ``min_purity`` of them)."""
    names = []
    for c in range(k):
        members = np.nonzero(clusters == c)[0]
        answers: dict[str, PathAnswer] = {}
        if manual is not None:
            answers["manual"] = PathAnswer(manual.get(c), 1.0 if c in manual else None, int(c in manual),
                                           "" if c in manual else "not in the file")
        lab = majority([tags[i] for i in members])
        if lab.label and (lab.n < min_labelled or (lab.purity or 0) < min_purity):
            lab.note = f"below --min-labelled {min_labelled}" if lab.n < min_labelled else f"purity below {min_purity}"
            lab = PathAnswer(None, lab.purity, lab.n, lab.note)
        answers["labels"] = lab
        if zero_shot is not None:
            answers["zero-shot"] = majority([zero_shot[i] for i in members])
        if estimates is not None:
            answers["estimator"] = majority([estimates[i] for i in members])
        label = source = purity = None
        for path in naming:
            answer = answers.get(path)
            if answer is not None and answer.label:
                label, source, purity = answer.label, path, answer.purity
                break
        names.append(ClusterName(c, int(len(members)), label, source, purity, answers))
    return names


# --------------------------------------------------------------------------------------------
# Balancing
# --------------------------------------------------------------------------------------------
def target_count(counts: dict[str, int], target: str | int | None) -> int | None:
    present = [c for c in counts.values() if c > 0]
    if target is None or not present:
        return None
    if isinstance(target, int):
        return target
    if target == "min":
        return min(present)
    if target == "max":
        return max(present)
    return int(math.ceil(float(np.median(present))))


@dataclass
class BalancePlan:
    target: int | None
    keep: list[int]  # originals kept (indices into the candidates)
    dropped: list[int]  # originals left out
    repeats: list[tuple[int, int]]  # (index of the original, copy number 1..)
    per_shot: dict[str, dict[str, int]]  # shot -> before / kept / repeats / after


def balance(shots: Sequence[str], tagged: Sequence[bool], distances: Sequence[float], order: Sequence[str],
            target: str | int | None, repeat: bool, max_repeat: int, seed: int) -> BalancePlan:
    """Per shot size: keep at most the target count (tag-labelled first in a seeded random order, then
    inferred ones nearest their cluster centre); with ``repeat``, cycle smaller classes up to the target,
    each record at most ``max_repeat`` times in all."""
    rng = np.random.default_rng(seed)
    by_shot: dict[str, list[int]] = {}
    for i, s in enumerate(shots):
        by_shot.setdefault(s, []).append(i)
    counts = {s: len(v) for s, v in by_shot.items()}
    goal = target_count(counts, target)
    keep: list[int] = []
    dropped: list[int] = []
    repeats: list[tuple[int, int]] = []
    per_shot: dict[str, dict[str, int]] = {}
    for shot in [s for s in order if s in by_shot] + sorted(s for s in by_shot if s not in order):
        members = by_shot[shot]
        with_tag = [i for i in members if tagged[i]]
        with_tag = [with_tag[j] for j in rng.permutation(len(with_tag))]
        inferred = sorted((i for i in members if not tagged[i]), key=lambda i: (distances[i], i))
        ranked = with_tag + inferred
        chosen = ranked if goal is None else ranked[:goal]
        keep += chosen
        dropped += ranked[len(chosen):]
        extra: list[tuple[int, int]] = []
        if repeat and goal is not None and len(chosen) < goal and chosen:
            cap = len(chosen) * max(1, max_repeat)
            cycle = [chosen[j] for j in rng.permutation(len(chosen))]
            copies: Counter = Counter()
            while len(chosen) + len(extra) < min(goal, cap):
                original = cycle[len(extra) % len(cycle)]
                copies[original] += 1
                extra.append((original, copies[original]))
        repeats += extra
        per_shot[shot] = {"before": len(members), "kept": len(chosen), "dropped": len(members) - len(chosen),
                          "repeats": len(extra), "after": len(chosen) + len(extra)}
    return BalancePlan(goal, sorted(keep), sorted(dropped), repeats, per_shot)


# --------------------------------------------------------------------------------------------
# Prompt text
# --------------------------------------------------------------------------------------------
def trigger_text(text: str | None, term: Term, vocabulary: Vocabulary) -> str:
    """``term``'s trigger token and name in front of ``text``'s other words. A trigger token or shot
    name already leading the text is replaced, so this is idempotent and the words agree with the token:
    ``"full shot, eye level, outdoor, a man walks"`` -> ``"<fs_trg>, full shot, eye level, outdoor, a man walks"``."""
    rest = text or ""
    while True:
        head, sep, tail = rest.partition(",")
        word = head.strip()
        if (not word and sep) or vocabulary.shot_for_token(word) is not None \
                or (word and vocabulary.lookup(word, "shot_size") is not None):
            rest = tail
            continue
        break
    rest = rest.strip()
    return ", ".join([term.token, term.name] + ([rest] if rest else []))
