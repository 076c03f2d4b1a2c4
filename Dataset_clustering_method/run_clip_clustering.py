"""Shot clustering and the balanced training set: CLIP (ViT-B-32) embeddings -> shot-type clusters ->
a balanced ``Dataset_fin/metadata.jsonl`` whose prompts start with the shot's trigger token.

Run from the project root (or from inside Dataset_clustering_method/; the default paths follow):

    python Dataset_clustering_method/run_clip_clustering.py
    python Dataset_clustering_method/run_clip_clustering.py --clip-model local-dir:clip --naming labels,estimator

The finalize stage's ``metadata.jsonl`` is kept as ``metadata_prebalance.jsonl`` and read from there, so
a re-run gives the same output. Embeddings are cached by image content; ``--shard i/n`` (or
``accelerate launch`` with several processes) embeds a share per machine / GPU, and
``--merge-caches CACHE...`` folds the shards' caches together; ``--ray-address`` encodes on a Ray
cluster instead (docs/scaling.md). See docs/clustering.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from storyboard.clustering.cache import merge_caches
from storyboard.clustering.settings import ClusteringSettings, parse_k_range, parse_naming
from storyboard.clustering.stage import run_clip_clustering
from storyboard.core.cli import add_vocabulary_arguments, run_main
from storyboard.engine.work import add_engine_arguments, engine_settings

# Paths are relative to the project root (the folder holding Dataset_fin/); run from inside
# Dataset_clustering_method/ they are taken from its parent instead.
METADATA = "Dataset_fin/metadata.jsonl"  # finalize's output, rewritten in place as the balanced training set
PREBALANCE = "Dataset_fin/metadata_prebalance.jsonl"  # where finalize's file is kept and read from
CLIP_MODEL = "ViT-B-32"  # open_clip architecture, local-dir:FOLDER, or a model config .json
CLIP_CHECKPOINT = "Dataset_clustering_method/ViT-B-32-openai.pt"  # the seed's CLIP weights
CLIP_CHECKPOINT_FALLBACK = "Dataset_clustering_method/clip-vit-b-32.pt"  # tried when the first is absent
CACHE_DIR = "Dataset_clustering_method/embedding_cache"  # embeddings by image content and model
GALLERY_DIR = "Dataset_clustering_method/gallery"  # the HTML gallery, report and label template
BATCH_SIZE = 64  # images per forward pass
K = None  # clusters; None = chosen by silhouette over K_RANGE
K_RANGE = "2-16"  # range of k tried when K is None
PCA = 0  # principal components before k-means; 0 = none
DEDUPE_THRESHOLD = 0.97  # cosine similarity at which two images count as near-duplicates (>1: off)
NAMING = "manual,labels,zero-shot,estimator"  # how clusters get shot sizes, first that answers wins
CLUSTER_LABELS = None  # a person's cluster -> shot size JSON (from the gallery's template)
MIN_PURITY = 0.5  # "labels" names a cluster only when its tag majority is at least this pure
MIN_LABELLED = 2  # ... and has at least this many tag-labelled members
BALANCE_TARGET = "median"  # per shot size: a count, min, median, max, or none
REPEAT = False  # repeat records of small shot sizes up to the target
MAX_REPEAT = 3  # at most this many copies of one record in all
SEED = 0  # k-means, balancing
RAY_ADDRESS = None  # None = embed in process; "local", "auto" or "host:port" = CLIP actors on a Ray cluster


def _root() -> Path:
    return Path("..") if Path.cwd().name == "Dataset_clustering_method" else Path(".")


def add_clip_arguments(parser: argparse.ArgumentParser, model_default: str, checkpoint_default: str) -> None:
    group = parser.add_argument_group("CLIP model (local files only)")
    group.add_argument("--clip-model", default=model_default,
                       help="open_clip architecture (ViT-B-32, ...), local-dir:FOLDER (open_clip folder with its "
                            "weights), or a model config .json (default: %(default)s)")
    group.add_argument("--clip-checkpoint", type=Path, default=Path(checkpoint_default),
                       help="weights for --clip-model: an open_clip/OpenAI .pt (read with weights_only=True; OpenAI's "
                            "TorchScript files with torch.jit.load) or .safetensors (default: %(default)s)")
    group.add_argument("--clip-quick-gelu", choices=("auto", "on", "off"), default="auto",
                       help="QuickGELU activations, as OpenAI's weights need; auto: on for OpenAI's TorchScript files "
                            "and files named *openai* (default: %(default)s)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto = GPU when present)")


def build_parser() -> argparse.ArgumentParser:
    root = _root()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = parser.add_argument_group("data")
    io.add_argument("--metadata", type=Path, default=root / METADATA,
                    help="finalize's metadata.jsonl; the balanced set is written here")
    io.add_argument("--input", type=Path, default=None,
                    help="read this file instead (the pre-balance copy is then left alone)")
    io.add_argument("--prebalance", type=Path, default=root / PREBALANCE, help="where finalize's file is kept")
    io.add_argument("--data-root", type=Path, default=None,
                    help="folder the records' file_name is relative to (default: the metadata's folder)")
    io.add_argument("--rejects", type=Path, default=None, help="default: clustering.rejects.jsonl beside --metadata")
    add_clip_arguments(parser, CLIP_MODEL, str(root / CLIP_CHECKPOINT))
    emb = parser.add_argument_group("embedding")
    emb.add_argument("--cache-dir", type=Path, default=root / CACHE_DIR, help="embedding cache folder")
    emb.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    emb.add_argument("--workers", type=int, default=None, help="image decoding workers (default: by device)")
    emb.add_argument("--fast-decode", action=argparse.BooleanOptionalAction, default=True,
                     help="decode JPEGs at reduced size when the model's input is much smaller")
    emb.add_argument("--shard", default=None, metavar="I/N",
                     help="embed only shard I of N (0-based) into the cache and stop; merge caches, then run "
                          "without it")
    emb.add_argument("--merge-caches", nargs="+", type=Path, default=None, metavar="CACHE",
                     help="fold these cache folders into --cache-dir (one part per model) and stop")
    cl = parser.add_argument_group("clustering")
    cl.add_argument("--dedupe-threshold", type=float, default=DEDUPE_THRESHOLD)
    cl.add_argument("--k", type=int, default=K, help="number of clusters (default: chosen by silhouette)")
    cl.add_argument("--k-range", default=K_RANGE, help="k tried when --k is not given")
    cl.add_argument("--pca", type=int, default=PCA, help="principal components before k-means (0: none)")
    cl.add_argument("--seed", type=int, default=SEED)
    nm = parser.add_argument_group("naming clusters")
    nm.add_argument("--naming", default=NAMING, help="comma-separated paths in priority order: manual, labels, "
                                                     "zero-shot, estimator")
    nm.add_argument("--cluster-labels", type=Path, default=CLUSTER_LABELS,
                    help="JSON a person wrote: {\"clusters\": {\"0\": \"full\", ...}} (see the gallery's template)")
    nm.add_argument("--min-purity", type=float, default=MIN_PURITY)
    nm.add_argument("--min-labelled", type=int, default=MIN_LABELLED)
    nm.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=True,
                    help="run the OpenCV shot-size estimator on every image (cached)")
    nm.add_argument("--estimator-bounds", type=Path, default=None,
                    help="JSON of face-share bounds per shot size (e.g. fitted_bounds from "
                         "storyboard.devkit.shot_eval)")
    bal = parser.add_argument_group("balancing")
    bal.add_argument("--balance-target", default=BALANCE_TARGET, help="per shot size: N, min, median, max or none")
    bal.add_argument("--repeat", action=argparse.BooleanOptionalAction, default=REPEAT,
                     help="repeat records of smaller shot sizes up to the target")
    bal.add_argument("--max-repeat", type=int, default=MAX_REPEAT)
    out = parser.add_argument_group("gallery")
    out.add_argument("--gallery-dir", type=Path, default=root / GALLERY_DIR)
    out.add_argument("--gallery-per-cluster", type=int, default=12)
    add_vocabulary_arguments(parser)
    add_engine_arguments(parser, RAY_ADDRESS, models=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge_caches:
        print(merge_caches(args.merge_caches, args.cache_dir).table())
        return 0
    default_checkpoint = args.clip_checkpoint == _root() / CLIP_CHECKPOINT
    checkpoint = args.clip_checkpoint
    if default_checkpoint and (args.clip_model.startswith("local-dir:") or args.clip_model.endswith(".json")):
        checkpoint = None  # the seed's .pt belongs to ViT-B-32; a folder model has its own weights
    settings = ClusteringSettings(
        metadata=args.metadata, input=args.input, prebalance=args.prebalance, data_root=args.data_root,
        rejects=args.rejects, clip_model=args.clip_model, clip_checkpoint=checkpoint,
        clip_checkpoint_fallbacks=(_root() / CLIP_CHECKPOINT_FALLBACK,) if default_checkpoint else (),
        clip_quick_gelu=args.clip_quick_gelu, device=args.device, batch_size=args.batch_size,
        workers=args.workers, fast_decode=args.fast_decode, cache_dir=args.cache_dir, shard=args.shard,
        dedupe_threshold=args.dedupe_threshold, k=args.k, k_range=parse_k_range(args.k_range), pca=args.pca,
        seed=args.seed, naming=parse_naming(args.naming), cluster_labels=args.cluster_labels,
        min_purity=args.min_purity, min_labelled=args.min_labelled, estimate=args.estimate,
        estimator_bounds=args.estimator_bounds, balance_target=args.balance_target, repeat=args.repeat,
        max_repeat=args.max_repeat, gallery_dir=args.gallery_dir, gallery_per_cluster=args.gallery_per_cluster,
        vocabulary=args.vocabulary, engine=engine_settings(args),
    )
    print(run_clip_clustering(settings).summary_text())
    return 0


if __name__ == "__main__":
    run_main(main)
