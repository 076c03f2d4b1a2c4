"""The validation report: grids, trigger fidelity and CLIP scores, base against each checkpoint.

Reads what ``storyboard.inference.validate`` wrote under ``<output-dir>/<column>/`` (``base`` and one folder per
checkpoint, each with its PNGs and ``images.jsonl``) and writes ``<output-dir>/report/``:

* ``grid-<shot>-<n>.png``: rows are prompts (same seed across the row), columns base + each
  checkpoint; a blank cell is an image not made (e.g. a trigger that checkpoint did not train);
* **trigger fidelity**: the share of images whose shot size, as a shot judge sees it, is the shot size
  the prompt asked for, per shot size, base vs each checkpoint, with counts. The judge is CLIP zero-shot
  (``storyboard.clustering.shots.ClipZeroShotJudge``) when CLIP weights are given (``--clip-model`` /
  ``--clip-checkpoint``), else the OpenCV estimator (``storyboard.clustering.shots.OpenCVShotEstimator``, no
  weights); ``--judge FILE`` names a learned judge instead (``storyboard.inference.learned_judge``).
  A judge is anything with ``name`` and ``judge(images) -> [guess with .shot_size]``;
* **CLIP score** (with CLIP weights only): 100 x cosine(image, prompt) per image, with the prompt in
  plain words (triggers replaced: CLIP does not know them), averaged per shot size and column;
* ``index.html`` with all of it, ``fidelity.json``, ``clip_scores.json`` and ``judgements.json``
  (the judge's answers, reused on the next run for images whose settings did not change).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image, ImageDraw, ImageFont

from storyboard.core.cli import UserError, format_table
from storyboard.core.html import escape, relative_href, render_table, write_page
from storyboard.core.records import atomic_write_bytes, atomic_write_json, read_jsonl
from storyboard.core.vocabulary import Vocabulary
from storyboard.inference.judge_file import read_judge_file
from storyboard.inference.prompt_files import read_validation_prompts
from storyboard.inference.prompts import plain_prompt

BASE_COLUMN = "base"
REPORT_DIR = "report"
GRID_MAX_ROWS = 12  # prompts per grid image
GRID_CELL_MAX = 192  # px; larger images are shrunk in the grid (the PNGs stay full size)


class Guess(Protocol):
    shot_size: str | None


class ShotJudge(Protocol):
    """``storyboard.clustering.shots``' judges have this shape; tests may pass any object that does."""

    name: str

    def judge(self, images: Sequence[Any]) -> Sequence[Guess]:
        ...


@runtime_checkable
class ClipScoring(Protocol):
    """A judge that also gives each image its CLIP score against a text (``storyboard.inference.judges``)."""

    def clip_scores(self, items: Sequence[tuple[Any, Path, str]], batch_size: int = 16,
                    log: Callable = print) -> dict[Any, float]:
        ...


@dataclass
class Column:
    name: str
    folder: Path
    meta: dict[str, dict] = field(default_factory=dict)  # record id -> image metadata
    run: dict = field(default_factory=dict)


def find_columns(out_root: Path, only: Sequence[str] | None = None) -> list[Column]:
    """``base`` first, then each checkpoint folder (by name) that holds an ``images.jsonl``."""
    if not out_root.is_dir():
        raise UserError(f"validation output folder not found: {out_root}")
    names = sorted(p.parent.name for p in out_root.glob("*/images.jsonl") if p.parent.name != REPORT_DIR)
    if only:
        missing = [n for n in only if n not in names]
        if missing:
            raise UserError(f"no validation images for {', '.join(missing)} under {out_root} "
                            f"(found: {', '.join(names) or 'none'})")
        names = [n for n in names if n in only]
    names.sort(key=lambda n: (n != BASE_COLUMN, n))
    columns = []
    for name in names:
        folder = out_root / name
        col = Column(name, folder)
        for item in read_jsonl(folder / "images.jsonl"):
            if item.record and item.record.get("id") and (folder / str(item.record.get("file", ""))).is_file():
                col.meta[str(item.record["id"])] = item.record
        if (folder / "run.json").is_file():
            col.run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        columns.append(col)
    if not columns:
        raise UserError(f"no validation images under {out_root}: run validation.sh / base_valid.sh first")
    return columns


def image_path(col: Column, rid: str) -> Path | None:
    meta = col.meta.get(rid)
    return col.folder / meta["file"] if meta else None


# --------------------------------------------------------------------------------------------
# Judging (cached by image settings)
# --------------------------------------------------------------------------------------------
def judge_columns(judge: ShotJudge, columns: Sequence[Column], cache_file: Path | None, batch_size: int = 16,
                  log: Callable = print) -> dict[tuple[str, str], str | None]:
    """(column, record id) -> the judged shot size, judging only images not in the cache."""
    cache: dict = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            cache = {}
    mine = cache.setdefault(judge.name, {})
    out: dict[tuple[str, str], str | None] = {}
    todo: list[tuple[str, str, Path, str]] = []
    for col in columns:
        for rid, meta in col.meta.items():
            key = f"{col.name}/{rid}"
            stamp = str(meta.get("job_key") or meta.get("parameters"))
            hit = mine.get(key)
            if hit and hit.get("stamp") == stamp:
                out[(col.name, rid)] = hit["shot_size"]
            else:
                todo.append((col.name, rid, col.folder / meta["file"], stamp))
    if todo:
        log(f"judging {len(todo)} image(s) with {judge.name} ({len(out)} from the cache)")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        images = []
        for _, _, path, _ in chunk:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        guesses = judge.judge(images)
        for (cname, rid, _, stamp), guess in zip(chunk, guesses):
            shot = getattr(guess, "shot_size", None)
            out[(cname, rid)] = shot
            mine[f"{cname}/{rid}"] = {"stamp": stamp, "shot_size": shot,
                                      "score": round(float(getattr(guess, "score", 0.0) or 0.0), 4)}
    if cache_file and todo:
        atomic_write_json(cache_file, cache)
    return out


@dataclass
class FidelityTable:
    """Per asked shot size and column: images judged, images judged as the shot asked for."""

    judge: str
    shots: list[str]
    columns: list[str]
    counts: dict[tuple[str, str], tuple[int, int]]  # (shot, column) -> (matched, n)

    def totals(self, column: str) -> tuple[int, int]:
        m = sum(self.counts.get((s, column), (0, 0))[0] for s in self.shots)
        n = sum(self.counts.get((s, column), (0, 0))[1] for s in self.shots)
        return m, n

    @staticmethod
    def cell(matched: int, n: int) -> str:
        return f"{matched}/{n} ({100 * matched / n:.0f}%)" if n else "-"

    def rows(self) -> list[list[str]]:
        rows = [[shot] + [self.cell(*self.counts.get((shot, c), (0, 0))) for c in self.columns] for shot in self.shots]
        rows.append(["all"] + [self.cell(*self.totals(c)) for c in self.columns])
        return rows

    def header(self) -> list[str]:
        return ["shot size asked"] + self.columns

    def text(self) -> str:
        return f"trigger fidelity (judge: {self.judge})\n" + format_table(self.rows(), header=self.header())

    def to_json(self) -> dict:
        return {"judge": self.judge, "columns": self.columns,
                "by_shot": {s: {c: dict(zip(("matched", "n"), self.counts.get((s, c), (0, 0)))) for c in self.columns}
                            for s in self.shots},
                "total": {c: dict(zip(("matched", "n"), self.totals(c))) for c in self.columns}}


def fidelity_table(judge_name: str, records: Sequence[dict], columns: Sequence[Column],
                   judged: dict[tuple[str, str], str | None], vocab: Vocabulary) -> FidelityTable:
    order = [t.key for t in vocab.shot_sizes]
    asked = {r["id"]: r.get("shot_size") for r in records}
    counts: dict[tuple[str, str], list[int]] = {}
    for col in columns:
        for rid in col.meta:
            shot = asked.get(rid) or col.meta[rid].get("shot_size")
            if not shot or (col.name, rid) not in judged:
                continue
            cell = counts.setdefault((shot, col.name), [0, 0])
            cell[1] += 1
            cell[0] += int(judged[(col.name, rid)] == shot)
    shots = [s for s in order if any((s, c.name) in counts for c in columns)]
    shots += sorted({s for s, _ in counts} - set(shots))
    return FidelityTable(judge_name, shots, [c.name for c in columns], {k: (v[0], v[1]) for k, v in counts.items()})


# --------------------------------------------------------------------------------------------
# Which judge; CLIP scores
# --------------------------------------------------------------------------------------------
def check_judge_flags(clip_model: str | None, clip_checkpoint: str | None, judge_file: str | Path | None,
                      vocab: Vocabulary) -> None:
    """The judge flags, checked without loading a model (``--judge``: its header only)."""
    if clip_checkpoint and not clip_model:
        raise UserError("--clip-checkpoint needs --clip-model (the architecture, e.g. ViT-B-32)")
    if judge_file:
        if clip_model:
            raise UserError("--judge and --clip-model both name a fidelity judge; give one")
        read_judge_file(judge_file, vocab)


def load_judge(clip_model: str | None, clip_checkpoint: str | None, vocab: Vocabulary, device: str = "auto",
               judge_file: str | Path | None = None):
    """A learned judge when ``judge_file`` is given, CLIP zero-shot (+ CLIP score) when CLIP weights are
    named, else the OpenCV estimator."""
    check_judge_flags(clip_model, clip_checkpoint, judge_file, vocab)
    from storyboard.inference.judges import load_judge as load  # noqa: PLC0415 (heavy: the shot judges load torch, OpenCV and open_clip, only once the flags and prompts are checked)

    return load(clip_model, clip_checkpoint, vocab, device=device, judge_file=judge_file)


def clip_scores(scorer: ClipScoring, columns: Sequence[Column], vocab: Vocabulary,
                log: Callable = print) -> dict[tuple[str, str], float]:
    """(column, record id) -> 100 x max(cos(image, prompt in plain words), 0): CLIP does not know the triggers."""
    items = [((col.name, rid), col.folder / meta["file"], plain_prompt(meta["prompt"], vocab))
             for col in columns for rid, meta in col.meta.items()]
    return scorer.clip_scores(items, log=log)


# --------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _wrap(text: str, width_chars: int, max_lines: int) -> list[str]:
    lines = textwrap.wrap(text, width_chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width_chars - 1, 1)] + "…"
    return lines


def render_grid(rows: Sequence[tuple[str, Sequence[Path | None]]], columns: Sequence[str], cell: int):
    """One PIL image: a header row of column names, then one row per prompt (label + a cell each)."""
    font = _font(max(10, min(14, cell // 10)))
    label_w, header_h, pad = max(220, cell + 40), 24, 4
    width = label_w + len(columns) * (cell + pad) + pad
    height = header_h + len(rows) * (cell + pad) + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((label_w + c * (cell + pad) + pad, 6), name[: max(cell // 7, 6)], fill="black", font=font)
    chars = max(label_w // 7, 10)
    for r, (label, paths) in enumerate(rows):
        y = header_h + r * (cell + pad) + pad
        for n, line in enumerate(_wrap(label, chars, max(cell // 16, 2))):
            draw.text((pad, y + n * 15), line, fill="black", font=font)
        for c, path in enumerate(paths):
            x = label_w + c * (cell + pad) + pad
            if path is None:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill="#e4e4e4")
                draw.text((x + 4, y + 4), "not made", fill="#777", font=font)
                continue
            with Image.open(path) as im:
                thumb = im.convert("RGB")
                thumb.thumbnail((cell, cell))
            grid.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    return grid


def write_grids(records: Sequence[dict], columns: Sequence[Column], out_dir: Path, vocab: Vocabulary,
                max_rows: int = GRID_MAX_ROWS) -> list[tuple[str, Path]]:
    """Grid PNGs, one series per asked shot size; returns (title, path)."""
    sizes = [int(m.get("width") or 0) for c in columns for m in c.meta.values()]
    cell = min(max([s for s in sizes if s] or [64]), GRID_CELL_MAX)  # no width recorded: 64 px cells
    order = {t.key: n for n, t in enumerate(vocab.shot_sizes)}
    by_shot: dict[str, list[dict]] = {}
    for record in records:
        if any(record["id"] in c.meta for c in columns):
            by_shot.setdefault(record.get("shot_size") or "other", []).append(record)
    written = []
    for shot in sorted(by_shot, key=lambda s: order.get(s, len(order))):
        recs = by_shot[shot]
        for page in range(math.ceil(len(recs) / max_rows)):
            chunk = recs[page * max_rows:(page + 1) * max_rows]
            rows = [(f"{r['prompt']} · seed {r.get('seed', 0)}", [image_path(c, r["id"]) for c in columns])
                    for r in chunk]
            grid = render_grid(rows, [c.name for c in columns], cell)
            buf = io.BytesIO()
            grid.save(buf, format="PNG", optimize=True)
            path = out_dir / f"grid-{shot}-{page + 1:02d}.png"
            atomic_write_bytes(path, buf.getvalue())
            written.append((f"{shot} ({page * max_rows + 1}–{page * max_rows + len(chunk)})", path))
    return written


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
def _score_table(scores: dict[tuple[str, str], float], records: Sequence[dict], columns: Sequence[Column],
                 vocab: Vocabulary) -> tuple[list[str], list[list[object]]]:
    asked = {r["id"]: r.get("shot_size") or "other" for r in records}
    shots = [t.key for t in vocab.shot_sizes]
    rows: list[list[object]] = []
    for shot in [*shots, "all"]:
        row: list[object] = [shot]
        keep = False
        for col in columns:
            vals = [v for (c, rid), v in scores.items() if c == col.name and (shot == "all" or asked.get(rid) == shot)]
            row.append(f"{sum(vals) / len(vals):.2f} (n={len(vals)})" if vals else "-")
            keep = keep or bool(vals)
        if keep:
            rows.append(row)
    return ["shot size asked"] + [c.name for c in columns], rows


@dataclass
class ReportResult:
    index: Path
    fidelity: FidelityTable
    grids: list[tuple[str, Path]]
    clip: dict | None = None


def write_report(out_root: Path, records: Sequence[dict], vocab: Vocabulary, judge: ShotJudge,
                 columns: Sequence[str] | None = None, log: Callable = print) -> ReportResult:
    """Everything in the module doc, under ``out_root/report/``."""
    out_root = Path(out_root)
    cols = find_columns(out_root, columns)
    known = {r["id"] for r in records}
    extra_ids = sorted({rid for c in cols for rid in c.meta} - known)
    if extra_ids:  # images from prompts no longer in the prompts file: still reported, after the rest
        records = list(records)
        for rid in extra_ids:
            meta = next(c.meta[rid] for c in cols if rid in c.meta)
            records.append({"id": rid, "prompt": meta.get("prompt_asked") or meta["prompt"],
                            "seed": meta.get("seed", 0), "shot_size": meta.get("shot_size")})
    report_dir = out_root / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)

    judged = judge_columns(judge, cols, report_dir / "judgements.json", log=log)
    fidelity = fidelity_table(judge.name, records, cols, judged, vocab)
    atomic_write_json(report_dir / "fidelity.json", fidelity.to_json())
    scores = None
    if isinstance(judge, ClipScoring):
        scores = clip_scores(judge, cols, vocab, log=log)
        atomic_write_json(report_dir / "clip_scores.json", {f"{c}/{rid}": v for (c, rid), v in scores.items()})
    grids = write_grids(records, cols, report_dir, vocab)

    parts = []
    summary_rows = []
    for col in cols:
        run = col.run
        s = run.get("settings", {})
        summary_rows.append([col.name, len(col.meta), run.get("checkpoint") or "(bare base model)",
                             f"{s.get('width')}x{s.get('height')}, {s.get('steps')} steps, CFG {s.get('guidance')}, "
                             f"{s.get('scheduler')}" if s else "",
                             ", ".join(f"{t} ({n})" for t, n in (run.get("skipped_untrained") or {}).items()) or "-"])
    parts.append("<h2>Columns</h2>" + render_table(
        ["column", "images", "checkpoint", "settings", "skipped: trigger not trained"], summary_rows))
    compared = {json.dumps({k: v for k, v in (c.run.get("settings") or {}).items() if k != "lora_scale"},
                           sort_keys=True) for c in cols if c.run}
    if len(compared) > 1:
        note = "the columns were made with different sampling settings: the comparison is not like for like"
        log(f"warning: {note}")
        parts.append(f'<p class="missing">Warning: {escape(note)}.</p>')
    parts.append(f"<h2>Trigger fidelity</h2><p>Share of images whose shot size, as judged by "
                 f"<b>{escape(fidelity.judge)}</b>, "
                 f"is the shot size the prompt asked for (matched / judged). The base model gets each trigger's plain "
                 f"words instead of the trigger.</p>" + render_table(fidelity.header(), fidelity.rows()))
    if scores is not None:
        header, rows = _score_table(scores, records, cols, vocab)
        parts.append("<h2>CLIP score</h2><p>100 × cosine(image, prompt in plain words), mean per shot size.</p>"
                     + render_table(header, rows))
    else:
        parts.append("<h2>CLIP score</h2><p>Not computed: no CLIP weights given "
                     "(--clip-model / --clip-checkpoint).</p>")
    parts.append("<h2>Grids</h2><p>Rows: prompts (same seed across a row). Columns: "
                 + escape(", ".join(c.name for c in cols)) + ".</p>")
    for title, path in grids:
        href = relative_href(path, report_dir)
        parts.append(f'<h3>{escape(title)}</h3><a href="{href}"><img src="{href}" style="max-width:100%"></a>')
    links = [f'<li><a href="{relative_href(c.folder / "images.jsonl", report_dir)}">'
             f'{escape(c.name)}/images.jsonl</a></li>' for c in cols]
    parts.append("<h2>Files</h2><ul>" + "".join(links)
                 + '<li><a href="fidelity.json">fidelity.json</a></li>'
                 + ('<li><a href="clip_scores.json">clip_scores.json</a></li>' if scores is not None else "") + "</ul>")
    index = write_page(report_dir / "index.html", "Validation report", "\n".join(parts),
                       subtitle=f"{len(records)} prompts × {len(cols)} columns, from {out_root}")
    clip_summary = None
    if scores is not None:
        clip_summary = {c.name: (sum(v for (cn, _), v in scores.items() if cn == c.name)
                                 / max(1, sum(1 for (cn, _) in scores if cn == c.name))) for c in cols}
    return ReportResult(index, fidelity, grids, clip_summary)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument("--clip-model", default="",
                       help="CLIP for the fidelity judge and CLIP score: an open_clip name (ViT-B-32, with "
                            "--clip-checkpoint), local-dir:FOLDER or a config .json; empty: the OpenCV estimator "
                            "judges")
    group.add_argument("--clip-checkpoint", default="", help="CLIP weights file (e.g. ViT-B-32-openai.pt)")
    group.add_argument("--judge", default="", metavar="FILE",
                       help="a learned shot judge (one .safetensors file with its classes and held-out accuracy "
                            "in its metadata, e.g. the proof world's); it judges fidelity instead of CLIP or OpenCV, "
                            "and its held-out accuracy is printed beside every figure")


def report_from_args(args: argparse.Namespace, out_root: Path, vocab: Vocabulary, log: Callable = print,
                     records: Sequence[dict] | None = None) -> Path:
    """Load the judge the flags name, write the report, print the fidelity table; returns index.html."""
    if records is None:
        records = read_validation_prompts(args.prompts, vocab)
    device = getattr(args, "device", "auto")
    judge = load_judge(args.clip_model, args.clip_checkpoint, vocab, device="cpu" if device == "cpu" else "auto",
                       judge_file=getattr(args, "judge", "") or None)
    result = write_report(out_root, records, vocab, judge, columns=getattr(args, "columns", None), log=log)
    log(result.fidelity.text())
    if result.clip:
        log("mean CLIP score: " + ", ".join(f"{k} {v:.2f}" for k, v in result.clip.items()))
    return result.index


def read_report_summary(out_root: Path) -> tuple[tuple[list[str], list[list[str]]] | None, list[Path], Path]:
    """What a page that links the report (the demo index) shows: the fidelity table as (header, rows)
    from ``report/fidelity.json`` (None when not written yet), the grid PNGs, and ``report/index.html``."""
    report_dir = Path(out_root) / REPORT_DIR
    table = None
    if (report_dir / "fidelity.json").is_file():
        data = json.loads((report_dir / "fidelity.json").read_text(encoding="utf-8"))
        columns = data["columns"]
        rows = [[shot] + [FidelityTable.cell(cells[c]["matched"], cells[c]["n"]) for c in columns]
                for shot, cells in data["by_shot"].items()]
        rows.append(["all"] + [FidelityTable.cell(data["total"][c]["matched"], data["total"][c]["n"]) for c in columns])
        table = ([f"shot size asked (judge: {data['judge']})"] + columns, rows)
    return table, sorted(report_dir.glob("grid-*.png")), report_dir / "index.html"
