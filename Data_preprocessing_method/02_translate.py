"""Translate the cleaned Korean metadata into English prompts: label words from the shot vocabulary
(never a model), the caption through --backend (table | marian | none), written as "text".

Run from inside ``Data_preprocessing_method/`` (the seed's command line):

    python 02_translate.py --input metadata_clean.jsonl --output metadata_translated.jsonl

With a local MarianMT folder (e.g. Helsinki-NLP/opus-mt-ko-en downloaded beforehand):

    python 02_translate.py --backend marian --model ../opus-mt-ko-en --batch-size 32

Writes ``metadata_translated.jsonl`` + ``.rejects.jsonl`` + ``.run.json``, and keeps translations in
``translation_cache.jsonl`` beside the output for the next run. See docs/metadata_stages.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from storyboard.core.cli import add_jsonl_stage_arguments, add_vocabulary_arguments, run_main
from storyboard.core.vocabulary import load_vocabulary
from storyboard.metadata.translate import BACKENDS, CACHE_NAME, TranslationCache, make_translator, translate_records

INPUT = "metadata_clean.jsonl"  # written by 01_preprocess_tags.py
OUTPUT = "metadata_translated.jsonl"  # read by 03_finalize_dataset.py
REJECTS = None  # None = beside the output, as metadata_translated.rejects.jsonl
BACKEND = "table"  # table: vocabulary words only | marian: local MarianMT folder | none: keep the Korean caption
MODEL = None  # MarianMT folder for --backend marian, e.g. "../opus-mt-ko-en"
BATCH_SIZE = 32  # captions per MarianMT batch
DEVICE = "auto"  # auto = cuda when a GPU is present, else Apple's mps, else cpu
MAX_NEW_TOKENS = None  # None = the model's generation_config
NUM_BEAMS = None  # None = the model's generation_config
CACHE = None  # None = translation_cache.jsonl beside the output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_jsonl_stage_arguments(parser, INPUT, OUTPUT, REJECTS, input_help="JSONL from 01_preprocess_tags.py")
    group = parser.add_argument_group("translation backend")
    group.add_argument("--backend", choices=BACKENDS, default=BACKEND,
                       help="how free text is translated (shot/angle/location words always come from the vocabulary)")
    group.add_argument("--model", type=Path, default=Path(MODEL) if MODEL else None,
                       help="local MarianMT folder (opus-mt-ko-en layout) for --backend marian")
    group.add_argument("--batch-size", "--batch_size", type=int, default=BATCH_SIZE, help="captions per model batch")
    group.add_argument("--device", default=DEVICE, help="auto, cpu, cuda or cuda:N")
    group.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                       help="generation length (default: model's)")
    group.add_argument("--num-beams", type=int, default=NUM_BEAMS, help="beam search width (default: model's)")
    group.add_argument("--fp16", action="store_true", help="half precision on GPU")
    group.add_argument("--cache", type=Path, default=Path(CACHE) if CACHE else None,
                       help=f"translation cache JSONL (default: {CACHE_NAME} beside the output)")
    group.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_vocabulary_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    vocabulary = load_vocabulary(args.vocabulary)
    translator = make_translator(args.backend, args.model, args.batch_size, args.device,
                                 args.max_new_tokens, args.num_beams, args.fp16)
    cache = None
    if args.backend == "marian" and not args.no_cache:
        cache = TranslationCache(args.cache or args.output.parent / CACHE_NAME, translator.backend,
                                 translator.fingerprint)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if translator is not None:
        config["model_fingerprint"] = translator.fingerprint
        config["device"] = getattr(translator, "device", None)
    stage = translate_records(args.input, args.output, args.rejects, vocabulary, translator, cache, config=config)
    print(stage.summary_table())
    return 0


if __name__ == "__main__":
    run_main(main)
