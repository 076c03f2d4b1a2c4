"""The clustering gallery: how a person checks the clusters before trusting them.

``write_gallery`` writes ``<gallery>/index.html``: the run's numbers, the k-selection curve, a 2-D PCA
map of the embeddings, the confusion matrices (tag labels against cluster labels, tag labels against
the OpenCV estimator) as pictures, one section per cluster (its label, where the label came from,
purity, the tag labels inside, the images nearest its centre and the farthest ones) and one per
final shot size. Thumbnails are small JPEGs under ``<gallery>/thumbs/`` named by image content, so a
re-run reuses them. Pictures are drawn with matplotlib's object-oriented API and rendered by Agg (no
display, no pyplot state).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from storyboard.clustering.decode import open_smallest
from storyboard.core.html import escape, relative_href, render_table, write_page
from storyboard.core.records import atomic_write_bytes

THUMB_SIZE = 200


def _figure(figsize: tuple[float, float]):
    """A figure and its axes, outside pyplot (no global state, no display: drawn with Agg when saved)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_confusion(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: Path, title: str,
                   xlabel: str = "predicted", ylabel: str = "true") -> Path:
    """A confusion matrix as a PNG: counts in the cells, shaded by share of the row."""
    matrix = np.asarray(matrix)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure((1.0 + 0.7 * len(cols), 1.0 + 0.55 * len(rows)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_k_selection(scores: dict[int, float], chosen: int, path: Path) -> Path:
    fig, ax = _figure((4.5, 2.8))
    ks = sorted(scores)
    ax.plot(ks, [scores[k] for k in ks], marker="o")
    ax.axvline(chosen, color="tab:red", linestyle="--", label=f"k = {chosen}")
    ax.set_xlabel("k")
    ax.set_ylabel("silhouette")
    ax.legend(fontsize=8)
    ax.set_title("choosing k", fontsize=9)
    return _save(fig, path)


def plot_map(points: np.ndarray, clusters: Sequence[int], names: dict[int, str], path: Path) -> Path:
    """The embeddings in their first two principal components, coloured by cluster."""
    pts = np.asarray(points, np.float32)
    if len(pts) >= 2 and pts.shape[1] >= 2:
        centred = pts - pts.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
    else:
        xy = np.zeros((len(pts), 2))
    fig, ax = _figure((5.5, 4.2))
    cmap = matplotlib.colormaps["tab20"]
    clusters = np.asarray(clusters)
    for c in sorted(set(clusters.tolist())):
        sel = clusters == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12, color=cmap(c % 20), label=f"{c}: {names.get(c, '?')}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("embeddings (first two principal components)", fontsize=9)
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    return _save(fig, path)


def make_thumb(image: Path, thumbs: Path, key: str, small: Path | None = None) -> Path:
    """A small JPEG of ``image`` (read from its ``small`` copy when there is one) named by its content
    hash ``key``; kept when it already exists."""
    out = thumbs / f"{key[:20]}.jpg"
    if out.is_file():
        return out
    try:
        img = open_smallest(image, small, THUMB_SIZE)
    except Exception:  # the gallery never fails on one picture
        img = Image.new("RGB", (THUMB_SIZE, THUMB_SIZE), (200, 200, 200))
    img.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    atomic_write_bytes(out, buffer.getvalue())
    return out


@dataclass
class GalleryItem:
    image: Path
    key: str  # content sha256
    caption: str
    small: Path | None = None  # the image's small copy (finalize's small_file), read for the thumbnail


@dataclass
class GalleryBlock:
    """One section: a title, a line of facts, a small table, and thumbnails."""

    title: str
    facts: str = ""
    table: tuple[Sequence[str], Sequence[Sequence[object]]] | None = None
    items: list[GalleryItem] = field(default_factory=list)
    more: list[GalleryItem] = field(default_factory=list)  # a second row (e.g. the farthest members)
    more_label: str = ""
    anchor: str = ""


def write_gallery(folder: Path, title: str, summary: str, overview: list[tuple[str, Path]],
                  tables: list[tuple[str, Sequence[str], Sequence[Sequence[object]]]],
                  blocks: list[GalleryBlock], block_groups: list[tuple[str, list[GalleryBlock]]] | None = None,
                  workers: int = 4) -> Path:
    """Write ``folder/index.html``; ``overview`` are (caption, PNG) pictures shown first."""
    folder.mkdir(parents=True, exist_ok=True)
    thumbs = folder / "thumbs"
    thumbs.mkdir(exist_ok=True)
    groups = block_groups or [("", blocks)]
    every = {(i.image, i.key, i.small) for _, bs in groups for b in bs for i in (*b.items, *b.more)}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        made = {(image, key): thumb for (image, key, _), thumb in
                zip(every, pool.map(lambda item: make_thumb(item[0], thumbs, item[1], item[2]), every))}

    def thumbs_html(items: Sequence[GalleryItem]) -> str:
        figures = []
        for item in items:
            src = relative_href(made[(item.image, item.key)], folder)
            href = relative_href(item.image, folder)
            figures.append(f'<figure><a href="{href}"><img src="{src}" loading="lazy" '
                           f'title="{escape(item.caption)}"></a>'
                           f"<figcaption>{escape(item.caption)}</figcaption></figure>")
        return f'<div class="thumbs">{"".join(figures)}</div>'

    parts = [f"<p>{escape(summary)}</p>"]
    nav = []
    for heading, bs in groups:
        if heading:
            nav.append(f"<b>{escape(heading)}:</b> " + " · ".join(
                f'<a href="#{escape(b.anchor)}">{escape(b.title)}</a>' for b in bs if b.anchor))
    if nav:
        parts.append("<p>" + "<br>".join(nav) + "</p>")
    if overview:
        figs = "".join(f'<figure style="display:inline-block;margin:0 1em 1em 0"><img src="{relative_href(p, folder)}" '
                       f'style="max-width:520px"><figcaption>{escape(c)}</figcaption></figure>'
                       for c, p in overview if Path(p).is_file())
        parts.append(f"<div>{figs}</div>")
    for heading, header, rows in tables:
        parts.append(f"<h2>{escape(heading)}</h2>{render_table(header, rows)}")
    for heading, bs in groups:
        if heading:
            parts.append(f"<h2>{escape(heading)}</h2>")
        for b in bs:
            anchor = f' id="{escape(b.anchor)}"' if b.anchor else ""
            parts.append(f"<h3{anchor}>{escape(b.title)}</h3>")
            if b.facts:
                parts.append(f"<p>{escape(b.facts)}</p>")
            if b.table:
                parts.append(render_table(*b.table))
            if b.items:
                parts.append(thumbs_html(b.items))
            if b.more:
                parts.append(f"<p><i>{escape(b.more_label)}</i></p>" + thumbs_html(b.more))
    return write_page(folder / "index.html", title, "\n".join(parts))


# --------------------------------------------------------------------------------------------
# The clustering stage's gallery
# --------------------------------------------------------------------------------------------
def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def build_gallery(folder: Path, settings, vocab, rows, clustering, names, final, plan, labelled, agreement,
                  est_agreement, k_scores, feats, guesses, report) -> Path:
    """The clustering stage's page (see the module doc). ``rows`` are the clustered records (with
    ``record``, ``path``, ``key``, ``tag``, ``id``); the rest is what the stage computed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per = max(1, int(settings.gallery_per_cluster))
    overview: list[tuple[str, Path]] = []
    if k_scores:
        overview.append(("silhouette score by k", plot_k_selection(k_scores, clustering.k, folder / "k_selection.png")))
    if len(rows) >= 2:
        overview.append(("clusters on the embeddings' first two principal components",
                         plot_map(feats, clustering.labels, {n.cluster: n.label or "?" for n in names},
                                  folder / "embedding_map.png")))
    for ev, png, caption in ((agreement, "confusion_tags_vs_clusters.png", "tag label vs its cluster's label"),
                             (est_agreement, "confusion_tags_vs_estimator.png", "tag label vs the OpenCV estimator")):
        if ev is not None and ev.n:
            plot_confusion(ev.confusion, ev.order, ev.order + ["none"], folder / png,
                           f"{caption}: {ev.exact:.0%} agree, {ev.within_one:.0%} within one step (n={ev.n})",
                           xlabel="cluster label" if "clusters" in png else "estimator", ylabel="tag label")
            overview.append((caption, folder / png))

    def caption(i: int) -> str:
        row = rows[i]
        bits = [str(row.id)[:28], f"tag {row.tag}" if row.tag else "no tag"]
        if guesses is not None:
            bits.append(f"est {guesses[i].shot_size}")
        return " · ".join(bits)

    def item(i: int) -> GalleryItem:
        return GalleryItem(rows[i].path, rows[i].key, caption(i), rows[i].small)

    cluster_rows = []
    cluster_blocks = []
    for n in names:
        members = [i for i in range(len(rows)) if clustering.labels[i] == n.cluster]
        members.sort(key=lambda i: float(clustering.distances[i]))
        tags = {}
        for i in members:
            if rows[i].tag:
                tags[rows[i].tag] = tags.get(rows[i].tag, 0) + 1
        tag_text = ", ".join(f"{k} {v}" for k, v in sorted(tags.items(), key=lambda kv: -kv[1])) or "none"
        answers = "; ".join(f"{p}: {a.label or '-'} ({_pct(a.purity)} of {a.n})" for p, a in n.answers.items())
        cluster_rows.append((n.cluster, n.size, n.label or "-", n.source or "-", _pct(n.purity), tag_text, answers))
        block = GalleryBlock(f"cluster {n.cluster}: {n.label or 'unnamed'}",
                             f"{n.size} images · named by {n.source or 'nothing'} · purity {_pct(n.purity)} · "
                             f"tag labels "
                             f"inside: {tag_text} · every path's answer: {answers}",
                             items=[item(i) for i in members[:per]], anchor=f"cluster-{n.cluster}")
        if len(members) > per:
            block.more = [item(i) for i in members[-max(1, per // 2):]]
            block.more_label = "farthest from the centre (the least typical members):"
        cluster_blocks.append(block)

    shot_blocks = []
    kept = sorted(labelled[j] for j in plan.keep)
    for shot, info in plan.per_shot.items():
        members = [i for i in kept if final[i] == shot]
        term = vocab.get("shot_size", shot)
        shot_blocks.append(GalleryBlock(
            f"{shot} ({term.token})",
            f"{info['before']} labelled, {info['dropped']} left out, {info['repeats']} repeats, {info['after']} in the "
            f"training set; {sum(1 for i in members if rows[i].tag)} from tags, "
            f"{sum(1 for i in members if not rows[i].tag)} inferred from their cluster",
            items=[item(i) for i in members[:per]], anchor=f"shot-{shot}"))

    summary = report.get("summary", {})
    text = (f"{len(rows)} images clustered into k = {clustering.k} clusters "
            f"({'chosen by silhouette' if k_scores else 'given'}); naming order {', '.join(settings.naming)}; "
            f"{summary.get('written', '?')} records written, {summary.get('rejected', '?')} rejected. "
            f"Model: {report.get('model', {}).get('described', '?')}. Clustering id {report.get('clustering_id')}. "
            f"To name clusters by hand, edit cluster_labels.template.json and pass it with --cluster-labels.")
    tables = [("clusters at a glance",
               ("cluster", "images", "shot size", "named by", "purity", "tag labels inside", "answers"),
               cluster_rows),
              ("balanced training set", ("shot size", "before", "left out", "repeats", "after"),
               [(shot, v["before"], v["dropped"], v["repeats"], v["after"]) for shot, v in plan.per_shot.items()])]
    if agreement is not None and agreement.n:
        tables.append(("agreement with tag labels", ("compared", "images", "exact", "within one step"),
                       [(ev.name, ev.n, _pct(ev.exact), _pct(ev.within_one))
                        for ev in (agreement, est_agreement) if ev is not None and ev.n]))
    return write_gallery(folder, "Shot clusters", text, overview, tables, [],
                         block_groups=[("clusters", cluster_blocks), ("shot sizes in the training set", shot_blocks)])
