"""``python -m storyboard.devkit.proof``: build (or reuse) the world, run the front doors, write the page."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from storyboard.core.cli import UserError, run_main
from storyboard.devkit.proof.config import WorldConfig, tiny_world_config

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_WORK = REPO_ROOT / "proof_run"          # laid out like the seed's root
DEFAULT_CACHE = REPO_ROOT / ".proof_cache"      # worlds, one folder per configuration fingerprint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m storyboard.devkit.proof", description=__doc__)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="the run's folder (default: %(default)s)")
    parser.add_argument("--world-cache", type=Path, default=DEFAULT_CACHE,
                        help="where worlds are cached, world-<fingerprint>/ each (default: %(default)s)")
    parser.add_argument("--config", type=Path, help="JSON with world values to change (e.g. "
                        '{"base": {"steps": 2000}}); the rest stay the defaults: a changed value builds a new world')
    parser.add_argument("--tiny", action="store_true",
                        help="the seconds-scale miniature (the test suite's): proves the path runs, not that it learns")
    parser.add_argument("--train-steps", type=int, help="override the recipe's --max_train_steps")
    parser.add_argument("--train-extra", default="", metavar="FLAGS",
                        help='more trainer flags after the recipe\'s (they win), e.g. "--lr_scheduler cosine '
                             '--lr_warmup_steps 30"')
    parser.add_argument("--guidance", type=float, help="override the sampling CFG scale")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the validation seeds (e.g. fresh ones, to "
                        "check a recipe chosen on the default seeds)")
    parser.add_argument("--data-path", choices=("stages", "direct"), help="how Dataset_fin is made: through "
                        "collect -> 01 -> 02 -> 03 -> clustering (stages, the default) or straight from the renderer")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="render processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (one beat two on the shared 2-core machine; default: %(default)s)")
    return parser


def _settings(args: argparse.Namespace, run):
    settings = run.tiny_settings() if args.tiny else run.ProofSettings()
    changes = {}
    if args.train_steps:
        train = list(settings.train_args)
        train[train.index("--max_train_steps") + 1] = str(args.train_steps)
        changes["train_args"] = tuple(train)
    if args.train_extra:
        changes["train_args"] = (*changes.get("train_args", settings.train_args), *shlex.split(args.train_extra))
    if args.guidance:
        changes["guidance"] = args.guidance
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.data_path:
        changes["data_path"] = args.data_path
    return type(settings)(**{**settings.to_dict(), **changes}) if changes else settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = tiny_world_config() if args.tiny else WorldConfig()
    if args.config:
        try:
            config = config.with_changes(json.loads(args.config.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise UserError(f"--config {args.config}: {exc}") from None
        except (KeyError, TypeError) as exc:
            raise UserError(f"--config {args.config}: unknown world setting {exc}") from None
    import torch  # noqa: PLC0415 (heavy: only once the flags and the configuration are checked)

    from storyboard.devkit.proof import run  # noqa: PLC0415 (heavy: torch, diffusers; after the checks, as above)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    proof = run.Proof(work=args.work, cache=args.world_cache, config=config, settings=_settings(args, run),
                      device=args.device, workers=args.workers, threads=args.threads)
    index = run.run_proof(proof)
    print(f"\nProof finished in {time.perf_counter() - started:.0f} s. Open: {index}")
    return 0


if __name__ == "__main__":
    run_main(main)
