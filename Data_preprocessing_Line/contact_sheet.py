"""Contact sheet of the image stages (the seed looked at them in a notebook): original | bubble mask |
cleaned square | line art for a sample of records, as one PNG and an HTML page.

Run from inside ``Data_preprocessing_Line/`` after the stages:

    python contact_sheet.py --image-root /path/to/images

Writes ``../Dataset_fin/contact_sheet.png``, ``../Dataset_fin/contact_sheet.html`` and the page's
thumbnails in ``../Dataset_fin/contact_sheet_files/``. See docs/image_stages.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from storyboard.core.cli import UserError, run_main
from storyboard.images.contact_sheet import write_contact_sheet

DATA_DIR = "../Dataset_fin"  # the finalized data set
IMAGE_ROOT = None  # the originals (03_finalize_dataset.py's --image-root); None = no original column
OUT = None  # None = <data-dir>/contact_sheet (.png, .html, _files/)
COUNT = 12  # records on the sheet
SEED = 0  # which records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(DATA_DIR), help="finalized data set folder")
    parser.add_argument("--image-root", type=Path, default=Path(IMAGE_ROOT) if IMAGE_ROOT else None,
                        help="folder of the original images")
    parser.add_argument("--metadata", type=Path, default=None, help="records (default: <data-dir>/metadata.jsonl)")
    parser.add_argument("--out", type=Path, default=Path(OUT) if OUT else None,
                        help="output path without suffix (default: <data-dir>/contact_sheet)")
    parser.add_argument("--count", type=int, default=COUNT, help="records on the sheet")
    parser.add_argument("--seed", type=int, default=SEED, help="which records (same seed, same sample)")
    args = parser.parse_args(argv)
    if args.count < 1:
        raise UserError("--count must be at least 1")
    if args.image_root is not None and not args.image_root.is_dir():
        raise UserError(f"--image-root {args.image_root}: not a folder")
    png, page = write_contact_sheet(args.data_dir, args.out or args.data_dir / "contact_sheet", args.image_root,
                                    args.metadata, args.count, args.seed)
    print(f"contact sheet: {png}\n               {page}")
    return 0


if __name__ == "__main__":
    run_main(main)
