"""A contact sheet of the image stages, for a person to eyeball: original | bubble mask | cleaned
square | line art, one row per record, for a sample of records.

    python -m storyboard.images.contact_sheet --data-dir Dataset_fin --image-root /path/to/images [--count 12]

Writes ``<out>.png`` (one picture) and ``<out>.html`` (the same rows with the record's id, shot
size, prompt and bubble count, every thumbnail a link), thumbnails in ``<out>_files/``; ``--out``
defaults to ``<data-dir>/contact_sheet``. The mask column shows the removed area in red over the
original. A column whose file a record lacks (no bubble pass, no line art yet) is a grey cell. The
cleaned square is read from its small copy (``small_file``, 256 px) when that fills a cell.
"""
from __future__ import annotations

import argparse
import html
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from storyboard.core.cli import UserError, run_main
from storyboard.core.html import relative_href, write_page
from storyboard.core.imageio import load_rgb
from storyboard.core.records import RecordError, atomic_write_bytes, load_jsonl, resolve_under

COLUMNS = ("original", "bubble mask", "cleaned square", "line art")
MISSING = (225, 225, 225)


def pick(records: list[dict], count: int, seed: int) -> list[dict]:
    """``count`` records, half of them (when there are) with bubbles, in input order; same seed, same pick."""
    rng = np.random.default_rng(seed)
    with_bubbles = [i for i, r in enumerate(records) if (r.get("bubble_area") or 0) > 0]
    others = sorted(set(range(len(records))) - set(with_bubbles))
    take_b = min(len(with_bubbles), max(count // 2, count - len(others)))
    chosen = list(rng.choice(with_bubbles, take_b, replace=False)) if take_b else []
    rest = min(len(others), count - take_b)
    chosen += list(rng.choice(others, rest, replace=False)) if rest else []
    return [records[i] for i in sorted(chosen)]


def _fit(rgb: np.ndarray | None, cell: int) -> np.ndarray:
    canvas = np.full((cell, cell, 3), MISSING, np.uint8)
    if rgb is None:
        return canvas
    h, w = rgb.shape[:2]
    scale = cell / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    y, x = (cell - small.shape[0]) // 2, (cell - small.shape[1]) // 2
    canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return canvas


def _read(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return load_rgb(path).rgb
    except RecordError:
        return None


def _square(record: dict, data_dir: Path, cell: int, under) -> np.ndarray | None:
    """The cleaned square, from its small copy (``small_file``) when that still fills a cell."""
    small = _read(under(data_dir, record.get("small_file")))
    if small is not None and min(small.shape[:2]) >= cell:
        return small
    return _read(under(data_dir, record.get("file_name")))


def row_images(record: dict, data_dir: Path, image_root: Path | None, cell: int = 256) -> list[np.ndarray | None]:
    """The four pictures of one record (None where a stage's file is absent)."""
    def under(root: Path | None, rel) -> Path | None:
        if root is None or not rel:
            return None
        try:
            return resolve_under(root, rel)
        except RecordError:
            return None

    original = _read(under(image_root, record.get("image")))
    overlay = None
    mask_path = under(data_dir, record.get("bubble_mask_file"))
    if original is not None and mask_path is not None and mask_path.is_file():
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is not None and mask.shape == original.shape[:2]:
            overlay = original.copy()
            hit = mask > 0
            overlay[hit] = (overlay[hit] * 0.35 + np.array([255, 0, 0]) * 0.65).astype(np.uint8)
    return [original, overlay, _square(record, data_dir, cell, under),
            _read(under(data_dir, record.get("lineart_file")))]


def _label(cell: np.ndarray, text: str) -> None:
    cv2.rectangle(cell, (0, 0), (cell.shape[1], 18), (255, 255, 255), -1)
    cv2.putText(cell, text.encode("ascii", "replace").decode(), (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0),
                1, cv2.LINE_AA)


def write_contact_sheet(data_dir: Path, out: Path, image_root: Path | None = None, metadata: Path | None = None,
                        count: int = 12, seed: int = 0, cell: int = 256) -> tuple[Path, Path]:
    """Write ``out.png`` and ``out.html``; returns both paths."""
    data_dir, out = Path(data_dir), Path(out)
    metadata = Path(metadata) if metadata else data_dir / "metadata.jsonl"
    if not metadata.is_file():
        raise UserError(f"metadata file not found: {metadata}")
    records = load_jsonl(metadata)
    if not records:
        raise UserError(f"{metadata} holds no records")
    chosen = pick(records, count, seed)
    files_dir = out.parent / f"{out.name}_files"
    header = np.full((24, cell * len(COLUMNS), 3), 255, np.uint8)
    for c, name in enumerate(COLUMNS):
        cv2.putText(header, name, (c * cell + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    rows, html_rows = [header], []
    for n, record in enumerate(chosen):
        cells, links = [], []
        for c, image in enumerate(row_images(record, data_dir, image_root, cell)):
            tile = _fit(image, cell)
            if c == 0:
                _label(tile, f"{n + 1}. {record.get('shot_size') or ''}")
            cells.append(tile)
            thumb = files_dir / f"{n:03d}_{c}.jpg"
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
            if ok:
                atomic_write_bytes(thumb, buf.tobytes())
            links.append(thumb if image is not None else None)
        rows.append(np.concatenate(cells, axis=1))
        html_rows.append(_html_row(n, record, links, out.parent))
    sheet = np.concatenate(rows, axis=0)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    png = out.with_suffix(".png")
    atomic_write_bytes(png, buf.tobytes())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("#", *COLUMNS, "record"))
    body = (f'<p>{len(chosen)} of {len(records)} records from {html.escape(str(metadata))} (seed {seed}). '
            f'<a href="{relative_href(png, out.parent)}">The whole sheet as one PNG</a>.</p>'
            f'<table class="sheet"><tr>{head}</tr>{"".join(html_rows)}</table>')
    page = write_page(out.with_suffix(".html"), "Contact sheet: image stages", body,
                      subtitle="original | bubble mask (removed area in red) | cleaned square | line art")
    return png, page


def _html_row(n: int, record: dict, links: Sequence[Path | None], page_dir: Path) -> str:
    cells = [f"<td>{n + 1}</td>"]
    for link in links:
        if link is None:
            cells.append('<td class="missing">-</td>')
        else:
            href = relative_href(link, page_dir)
            cells.append(f'<td><a href="{href}"><img src="{href}" width="192" loading="lazy"></a></td>')
    facts = [("id", record.get("id")), ("shot", record.get("shot_size")), ("angle", record.get("angle")),
             ("bubbles", len(record.get("bubbles") or [])), ("text", record.get("text"))]
    text = "<br>".join(f"<b>{k}</b> {html.escape(str(v))}" for k, v in facts if v not in (None, ""))
    cells.append(f'<td style="max-width:18em;font-size:0.85em">{text}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storyboard.images.contact_sheet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("Dataset_fin"), help="the finalized data set")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="where the records' original images are (the finalize stage's --image-root)")
    parser.add_argument("--metadata", type=Path, default=None, help="records (default: <data-dir>/metadata.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="output name without suffix "
                        "(default: <data-dir>/contact_sheet)")
    parser.add_argument("--count", type=int, default=12, help="records on the sheet")
    parser.add_argument("--seed", type=int, default=0, help="which records (same seed, same sample)")
    parser.add_argument("--cell", type=int, default=256, help="thumbnail side in the PNG")
    args = parser.parse_args(argv)
    if args.count < 1 or args.cell < 32:
        raise UserError("--count must be at least 1 and --cell at least 32")
    if args.image_root is not None and not args.image_root.is_dir():
        raise UserError(f"--image-root {args.image_root}: not a folder")
    png, page = write_contact_sheet(args.data_dir, args.out or args.data_dir / "contact_sheet", args.image_root,
                                    args.metadata, args.count, args.seed, args.cell)
    print(f"contact sheet: {png}\n               {page}")
    return 0


if __name__ == "__main__":
    run_main(main)
