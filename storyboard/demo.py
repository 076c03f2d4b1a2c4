"""The demo: every stage that exists, run through its real script on the sample data and tiny models.

``python -m storyboard.demo`` (what ``make demo`` runs) works in ``demo_run/``, laid out like the
seed's root (``model_sd/``, ``Dataset_fin/``, ``model_sd_weight/``, ``model_output/``,
``validation/output/``), and ends by writing ``demo_run/index.html``, which links each stage's
outputs. Each stage resumes on its own, so a second run skips finished work.

A stage is one function ``step_<name>(demo) -> Section`` listed in ``STEPS``; adding a stage to the
pipeline means adding its step here.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .cli import UserError, run_main
from .report import Section, write_index

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO_ROOT / "demo_run"  # the demo's work folder, laid out like the seed's root
DEFAULT_SEED = 0  # one seed for the sample data and the tiny models


@dataclass
class Demo:
    work: Path
    seed: int

    def run(self, args: Sequence[object], cwd: Path | None = None) -> str:
        """Run one real command as a user would; stop the demo with its output when it fails."""
        argv = [str(a) for a in args]
        shown = " ".join(shlex.quote(a) for a in argv).replace(sys.executable, "python")
        print(f"$ {shown}", flush=True)
        # The venv's bin first, so launchers find its `accelerate`; one thread, because the tiny
        # models gain nothing from more and two processes on two cores would oversubscribe.
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT),
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.run(argv, cwd=cwd or self.work, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(proc.stdout, end="" if proc.stdout.endswith("\n") or not proc.stdout else "\n", flush=True)
        if proc.returncode != 0:
            raise UserError(f"demo step failed (exit {proc.returncode}): {shown}")
        return shown

    def python(self, *args: object, cwd: Path | None = None) -> str:
        return self.run([sys.executable, *args], cwd=cwd)


def step_tiny_models(demo: Demo) -> Section:
    command = demo.python("-m", "storyboard.tiny", "--out", demo.work, "--seed", demo.seed)
    built = sorted(p.parent.name for p in demo.work.glob("*/.tiny_done"))
    return Section(
        "Tiny models",
        "Random-weight models built with the libraries' own classes and save_pretrained; every stage "
        "loads them through the same code a real checkpoint takes. Built: " + ", ".join(built),
        links=[(f"{name}/", demo.work / name) for name in built],
        command=command,
    )


def step_sample_data(demo: Demo) -> Section:
    out = demo.work / "sample_data"
    command = demo.python("-m", "storyboard.sample_data", "--out", out, "--seed", demo.seed)
    truth = json.loads((out / "ground_truth.json").read_text(encoding="utf-8"))
    images = truth["images"]
    thumbs = [(out / "images" / rel, f"{info['shot_size']} · {info['angle']} · {info['location']}")
              for rel, info in list(images.items())[:24]]
    faults = [(f["fault"], f.get("source", ""), f.get("line", ""), f["expected_reason"]) for f in truth["faults"]]
    return Section(
        "Sample data",
        f"{len(images)} procedurally drawn stills and conti frames (real face photo composited, Korean "
        "speech bubbles, odd image modes) with raw Korean metadata and planted faults.",
        links=[("raw/crawl_a.jsonl", out / "raw" / "crawl_a.jsonl"), ("raw/crawl_b.jsonl", out / "raw" / "crawl_b.jsonl"),
               ("titles.csv", out / "titles.csv"), ("ground_truth.json", out / "ground_truth.json")],
        thumbs=thumbs,
        table=(("planted fault", "source", "line", "expected reject reason"), faults),
        command=command,
    )


def _stage_section(title: str, text: str, output: Path, command: str) -> Section:
    """A section for a JSONL stage: its summary (from <output>.run.json) and links to what it wrote."""
    from .records import rejects_path_for, run_info_path_for

    run = json.loads(run_info_path_for(output).read_text(encoding="utf-8"))
    summary = run["summary"]
    rows = [("read", summary["read"]), ("written", summary["written"])]
    rows += [(f"rejected: {reason}", n) for reason, n in summary["rejected_by_reason"].items()]
    return Section(title, text, command=command, table=(("", "records"), rows),
                   links=[(output.name, output), (rejects_path_for(output).name, rejects_path_for(output)),
                          (run_info_path_for(output).name, run_info_path_for(output))])


def step_collect(demo: Demo) -> Section:
    cwd = demo.work / "Dataset_collect_title_method"
    cwd.mkdir(exist_ok=True)
    command = demo.python(REPO_ROOT / "Dataset_collect_title_method" / "collect_title_matches.py",
                          "--input", "../sample_data/raw", "--image-root", "../sample_data/images",
                          "--titles", "../sample_data/titles.csv", cwd=cwd)
    return _stage_section("Collect and match titles", "Raw crawls merged, titles matched, duplicates and "
                          "missing images sent to rejects.",
                          demo.work / "Data_preprocessing_method" / "metadata_raw.jsonl", command)


def step_clean_tags(demo: Demo) -> Section:
    cwd = demo.work / "Data_preprocessing_method"
    command = demo.python(REPO_ROOT / "Data_preprocessing_method" / "01_preprocess_tags.py",
                          "--input", "metadata_raw.jsonl", "--output", "metadata_clean.jsonl", cwd=cwd)
    return _stage_section("Clean Korean tags", "Tags and captions cleaned and mapped onto the shot vocabulary.",
                          cwd / "metadata_clean.jsonl", command)


def step_translate(demo: Demo) -> Section:
    cwd = demo.work / "Data_preprocessing_method"
    command = demo.python(REPO_ROOT / "Data_preprocessing_method" / "02_translate.py",
                          "--input", "metadata_clean.jsonl", "--output", "metadata_translated.jsonl",
                          "--backend", "marian", "--model", "../marian_ko_en", "--batch-size", 16, cwd=cwd)
    return _stage_section("Translate to English prompts", "Shot words through the vocabulary table, free text "
                          "through the tiny random-weight Marian model (so the caption words are noise).",
                          cwd / "metadata_translated.jsonl", command)


def step_base_model_check(demo: Demo) -> Section:
    """One picture from the tiny base through StableDiffusionPipeline.from_pretrained, as a user would."""
    out = demo.work / "model_output" / "base_check.png"
    code = (
        "import sys, torch; from diffusers import StableDiffusionPipeline\n"
        "pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "img = pipe('full shot, eye level, outdoor', num_inference_steps=4, height=64, width=64, generator=g).images[0]\n"
        "img.save(sys.argv[2])\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    command = demo.python("-c", code, demo.work / "model_sd", out)
    return Section("Tiny base model", "A 64 px image from the tiny base (random weights: noise is the expected look).",
                   thumbs=[(out, "base, 4 steps")], command="python -c '<StableDiffusionPipeline.from_pretrained ...>'")


STEPS: list[tuple[str, Callable[[Demo], Section]]] = [
    ("tiny models", step_tiny_models),
    ("sample data", step_sample_data),
    ("tiny base model", step_base_model_check),
    ("collect", step_collect),
    ("clean tags", step_clean_tags),
    ("translate", step_translate),
]


def run_demo(work: Path, seed: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    for folder in ("model_sd_weight", "model_output", "validation/output"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    demo = Demo(work=work.resolve(), seed=seed)
    sections = []
    for name, step in STEPS:
        started = time.time()
        print(f"\n=== {name} ===", flush=True)
        section = step(demo)
        section.text = f"{section.text} ({time.time() - started:.1f} s)".strip()
        sections.append(section)
    index = write_index(work / "index.html", "Storyboard Trigger demo", sections,
                        subtitle="Every stage that exists, run through its real script on the sample data and tiny models.")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storyboard.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for sample data and tiny models")
    args = parser.parse_args(argv)
    started = time.time()
    index = run_demo(args.work, args.seed)
    print(f"\nDemo finished in {time.time() - started:.0f} s. Open: {index.resolve()}")
    return 0


if __name__ == "__main__":
    run_main(main)
