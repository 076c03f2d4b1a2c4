"""Generate images with a trained trigger checkpoint (trigger tokens + LoRA) on its base model.

    python inference_trigger.py --base-model ./model_sd --checkpoint ./model_sd_weight/train_fs \
      --prompt "<fs_trg>, full shot, Eye level, outdoor" --output ./model_output/sample.png

    python inference_trigger.py --shot 풀샷 --prompt "a man in a coat, outdoor" --num-images 4 --output ./model_output/
    python inference_trigger.py --prompts-file prompts.jsonl --output ./model_output/batch/

Trigger rules: the shot a prompt asks for (its shot words in English or Korean, ``full shot``, ``풀샷``,
``FS``, ..., or ``--shot full``) puts that shot's trigger in front of it; a prompt that already holds a
trigger keeps it; two shots that disagree, or one the checkpoint did not train, are an error that
lists the trained ones. A Korean prompt is put in English first (``--translate``, as 02_translate.py).
Without ``--checkpoint`` the bare base model runs and every trigger is replaced by its plain words.
Each PNG carries its settings for the A1111 WebUI (``parameters``) and ComfyUI (``prompt``,
``workflow``), and a sidecar JSONL beside the images holds the prompt as given and as used. The logic
is in ``storyboard/inference/`` (``run``, ``prompts``, ``prompt_language``, ``handoff``, ``pipeline``);
see docs/inference_validation.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from storyboard.core.cli import add_vocabulary_arguments, run_main
from storyboard.inference.prompt_language import CACHE_FILE, TRANSLATE_CHOICES
from storyboard.inference.run import run_inference
from storyboard.inference.settings import add_model_arguments, add_sampling_arguments

BASE_MODEL = Path("./model_sd")  # the base trained on: a diffusers folder or one .safetensors / .ckpt file
CHECKPOINT = Path("./model_sd_weight/train_fs")  # the training output folder (LoRA + embeddings/ + manifest)
OUTPUT = Path("./model_output/sample.png")  # a .png file, or a folder for several images
PROMPT = None  # the prompt; None: give --prompt, --shot or --prompts-file
SEED = 0  # seed of the first image; image n of a prompt uses SEED + n
TRANSLATE = "table"  # Korean prompts: table (vocabulary words only) | marian (TRANSLATE_MODEL) | none (keep Korean)
TRANSLATE_MODEL = None  # a local MarianMT folder (opus-mt-ko-en layout) for --translate marian


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="inference_trigger.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    add_model_arguments(parser, base_default=BASE_MODEL)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT),
                        help="training output folder (default: %(default)s); pass '' for the bare base model")
    group = parser.add_argument_group("what to draw")
    group.add_argument("--prompt", default=PROMPT,
                       help="the prompt, English or Korean; its shot words (full shot, 풀샷, FS, ...) put their "
                            "trigger in front of it (a trigger already in it is kept)")
    group.add_argument("--shot", default=None,
                       help="shot size to put in front of the prompt: a key (full), words (full shot), Korean (풀샷) "
                            "or a token (<fs_trg>)")
    group.add_argument("--prompts-file", type=Path, default=None,
                       help="a .txt (one prompt a line) or .jsonl (prompt, negative_prompt, seed, shot, lora_scale) "
                            "file")
    group.add_argument("--seed", type=int, default=SEED, help="seed (default: %(default)s)")
    group.add_argument("--num-images", type=int, default=1,
                       help="images per prompt, seeds seed, seed+1, ... (default: 1)")
    group.add_argument("--output", type=Path, default=OUTPUT, help="a .png file or a folder (default: %(default)s)")
    language = parser.add_argument_group("Korean prompts (as 02_translate.py translates captions)")
    language.add_argument("--translate", choices=TRANSLATE_CHOICES, default=TRANSLATE,
                          help="table: shot, angle and location words from the vocabulary, other Korean words left out "
                               "(and listed); marian: those translated by --translate-model; none: kept in Korean "
                               "(default: %(default)s)")
    language.add_argument("--translate-model", type=Path, default=Path(TRANSLATE_MODEL) if TRANSLATE_MODEL else None,
                          help="local MarianMT folder for --translate marian (e.g. opus-mt-ko-en)")
    language.add_argument("--translation-cache", type=Path, default=None,
                          help=f"translation cache for --translate marian (default: {CACHE_FILE} beside the images; "
                               "02_translate.py's file works too)")
    language.add_argument("--no-translation-cache", action="store_true", help="neither read nor write the cache")
    add_sampling_arguments(parser)
    add_vocabulary_arguments(parser)
    args = parser.parse_args(argv)
    args.checkpoint = Path(args.checkpoint) if args.checkpoint else None

    result = run_inference(args, warn=lambda m: print(m, file=sys.stderr))
    print(result.summary_table())
    return 0


if __name__ == "__main__":
    run_main(main)
