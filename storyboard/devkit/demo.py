"""The demo: every stage that exists, run through its real script on the sample data and tiny models.

``python -m storyboard.devkit.demo`` (what ``make demo`` runs) works in ``demo_run/``, laid out like the
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storyboard.core.cli import UserError, run_main
from storyboard.core.html import Section, write_index
from storyboard.core.records import rejects_path_for, run_info_path_for
from storyboard.devkit.demo_clustering import step_clustering
from storyboard.inference.report import read_report_summary

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORK = REPO_ROOT / "demo_run"  # the demo's work folder, laid out like the seed's root
DEFAULT_SEED = 0  # one seed for the sample data and the tiny models
PROOF_PAGE = REPO_ROOT / "proof_run" / "index.html"  # what `make proof` writes (storyboard.devkit.proof)


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
    command = demo.python("-m", "storyboard.devkit.tiny", "--out", demo.work, "--seed", demo.seed)
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
    command = demo.python("-m", "storyboard.devkit.sample_data", "--out", out, "--seed", demo.seed)
    truth = json.loads((out / "ground_truth.json").read_text(encoding="utf-8"))
    images = truth["images"]
    thumbs = [(out / "images" / rel, f"{info['shot_size']} · {info['angle']} · {info['location']}")
              for rel, info in list(images.items())[:24]]
    faults = [(f["fault"], f.get("source", ""), f.get("line", ""), f["expected_reason"]) for f in truth["faults"]]
    return Section(
        "Sample data",
        f"{len(images)} procedurally drawn stills and conti frames (real face photo composited, Korean "
        "speech bubbles, odd image modes) with raw Korean metadata and planted faults.",
        links=[("raw/crawl_a.jsonl", out / "raw" / "crawl_a.jsonl"),
               ("raw/crawl_b.jsonl", out / "raw" / "crawl_b.jsonl"),
               ("titles.csv", out / "titles.csv"), ("ground_truth.json", out / "ground_truth.json")],
        thumbs=thumbs,
        table=(("planted fault", "source", "line", "expected reject reason"), faults),
        command=command,
    )


def _stage_section(title: str, text: str, output: Path, command: str) -> Section:
    """A section for a JSONL stage: its summary (from <output>.run.json) and links to what it wrote."""
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


def step_finalize(demo: Demo) -> Section:
    cwd = demo.work / "Data_preprocessing_method"
    command = demo.python(REPO_ROOT / "Data_preprocessing_method" / "03_finalize_dataset.py",
                          "--image-root", "../sample_data/images", "--metadata", "metadata_translated.jsonl",
                          "--out", "../Dataset_fin", cwd=cwd)
    section = _stage_section("Bubble removal and 1024 squares", "Images opened robustly (EXIF, odd modes), speech "
                             "bubbles masked and painted out, padded to 1024 x 1024 squares.",
                             demo.work / "Dataset_fin", command)
    masks = sorted((demo.work / "Dataset_fin").rglob("*mask*.png"))[:6]
    section.thumbs = [(m, m.name) for m in masks]
    return section


def step_lineart(demo: Demo) -> Section:
    cwd = demo.work / "Data_preprocessing_Line"
    cwd.mkdir(exist_ok=True)
    script = REPO_ROOT / "Data_preprocessing_Line" / "01_preprocessing.py"
    command = demo.python(script, "--backend", "xdog", cwd=cwd)
    # The seed's method too, on the tiny SDXL + ControlNet + annotators, beside the xdog set.
    demo.python(script, "--backend", "sdxl-controlnet", "--out-dir", "lineart_sdxl",
                "--output", "../Dataset_fin/metadata_lineart_sdxl.jsonl", "--size", 64,
                "--num-inference-steps", 2, "--detect-resolution", 128, cwd=cwd)
    sheet = demo.python(REPO_ROOT / "Data_preprocessing_Line" / "contact_sheet.py",
                        "--image-root", "../sample_data/images", cwd=cwd)
    data = demo.work / "Dataset_fin"
    xdog = sorted((data / "lineart").glob("*.png"))[:4]
    sdxl = sorted((data / "lineart_sdxl").glob("*.png"))[:2]
    return Section("Line art and contact sheet", "xdog line art for every square (and the seed's SDXL ControlNet "
                   "method on the tiny models, whose output is noise); the contact sheet shows original | bubble "
                   "mask | cleaned square | line art.",
                   links=[("contact sheet (HTML)", data / "contact_sheet.html"),
                          ("contact sheet (PNG)", data / "contact_sheet.png")],
                   thumbs=[(p, "xdog " + p.name) for p in xdog] + [(p, "sdxl-controlnet " + p.name) for p in sdxl],
                   command=command + "\n" + sheet)


# A few dozen steps on the tiny model: enough to show every output and a falling loss, in well under
# a minute on two CPU cores.
TRAIN_ARGS = ("--max_train_steps", 40, "--resolution", 64, "--train_batch_size", 4, "--dataloader_num_workers", 0,
              "--checkpointing_steps", 20, "--validation_steps", 20, "--num_validation_images", 1,
              "--validation_inference_steps", 8, "--learning_rate", "1e-3", "--text_encoder_lr", "1e-3",
              "--token_learning_rate", "1e-2")


def step_train(demo: Demo) -> Section:
    out = demo.work / "model_sd_weight" / "train_fs"
    argv = ["bash", REPO_ROOT / "shot_trigger_train.sh", "--pretrained_model_name_or_path", "./model_sd",
            "--train_data_dir", "./Dataset_fin", "--output_dir", "./model_sd_weight/train_fs", *TRAIN_ARGS]
    manifest_path = out / "trigger_manifest.json"
    done = manifest_path.is_file() and json.loads(manifest_path.read_text(encoding="utf-8"))["training"]
    steps = int(TRAIN_ARGS[TRAIN_ARGS.index("--max_train_steps") + 1])
    if done and done.get("final") and done.get("global_step") == steps and manifest_path.stat().st_mtime > \
            (demo.work / "Dataset_fin" / "metadata.jsonl").stat().st_mtime:
        # The trainer itself would start a new run; the demo skips a finished one on the same data.
        print(f"already trained ({steps} steps, newer than Dataset_fin/metadata.jsonl): {out}")
        command = " ".join(str(a) for a in argv)
    else:
        command = demo.run(argv)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    previews = sorted(out.rglob("*.png"))[-6:]
    embeddings = sorted((out / "embeddings").glob("*.safetensors"))
    webui = manifest.get("files", {}).get("webui_lora", "lora_webui.safetensors")
    links = [("pytorch_lora_weights.safetensors (diffusers)", out / "pytorch_lora_weights.safetensors"),
             (f"{webui} (kohya / A1111 / ComfyUI)", out / webui),
             ("comfyui_workflow.json (load in ComfyUI)", out / "comfyui_workflow.json"),
             ("trigger_manifest.json", out / "trigger_manifest.json")]
    logs = sorted((out / "logs").rglob("events.out.tfevents.*"))
    links += [(f"tensorboard curves: tensorboard --logdir {out / 'logs'}", logs[-1])] if logs else []
    links += [(f"embeddings/{e.name}", e) for e in embeddings]
    training = manifest["training"]
    return Section("Trigger tokens + LoRA training",
                   f"shot_trigger_train.sh → accelerate launch train_trigger02.py on the tiny base; "
                   f"{len(embeddings)} trigger tokens, {training['global_step']} steps; fixed-noise loss "
                   f"{training['fixed_noise_loss_start']:.3f} -> {training['fixed_noise_loss_end']:.3f}.",
                   links=links, thumbs=[(p, p.parent.name + "/" + p.name) for p in previews], command=command)


def step_inference(demo: Demo) -> Section:
    out = demo.work / "model_output" / "sample.png"
    command = demo.python(REPO_ROOT / "inference_trigger.py", "--base-model", "./model_sd",
                          "--checkpoint", "./model_sd_weight/train_fs",
                          "--prompt", "<fs_trg>, full shot, Eye level, outdoor",
                          "--output", "./model_output/sample.png")
    return Section("Inference", "The seed's inference call; the PNG carries A1111-style `parameters` text and a "
                   "sidecar JSONL.", thumbs=[(out, "<fs_trg>, full shot, Eye level, outdoor")], command=command)


def step_validation(demo: Demo) -> Section:
    prompts = demo.work / "validation" / "validation.jsonl"
    demo.python(REPO_ROOT / "validation" / "make_validation_jsonl.py", "--shots", "full", "medium", "close_up",
                "--angles", "eye_level", "--locations", "outdoor", "--subjects", "a man in a grey coat",
                "--seeds", 0, 1, "--output", prompts)
    # Two CPU processes: accelerate 1.15 starts only one with --cpu, so use --multi_gpu with --device cpu.
    common = ["--base-model", "model_sd", "--prompts", "validation/validation.jsonl", "--output-dir",
              "validation/output", "--width", 64, "--height", 64, "--steps", 4, "--device", "cpu"]
    env = ["env", f"PYTHON={sys.executable}", "ACCELERATE_ARGS=--multi_gpu --num_processes 2"]
    demo.run([*env, "bash", REPO_ROOT / "validation" / "base_valid.sh", *common])
    command = demo.run([*env, "bash", REPO_ROOT / "validation" / "validation.sh", *common,
                        "--checkpoint", "model_sd_weight/train_fs"])
    table, grids, page = read_report_summary(demo.work / "validation" / "output")
    return Section("Validation: base vs trained", "Validation prompts on two CPU processes under accelerate launch, "
                   "base model and trained checkpoint, same seed per row; trigger fidelity judged by the OpenCV "
                   "shot-size estimator (tiny random models draw noise, so low fidelity is expected).",
                   links=[("validation report", page)], table=table, thumbs=[(g, g.name) for g in grids[:4]],
                   command=command)


STEPS: list[tuple[str, Callable[[Demo], Section]]] = [
    ("tiny models", step_tiny_models),
    ("sample data", step_sample_data),
    ("collect", step_collect),
    ("clean tags", step_clean_tags),
    ("translate", step_translate),
    ("finalize", step_finalize),
    ("line art", step_lineart),
    ("clustering", step_clustering),
    ("training", step_train),
    ("inference", step_inference),
    ("validation", step_validation),
]


def proof_section(page: Path) -> Section:
    """A link to ``make proof``'s page when it exists (the tiny models here prove nothing; that page does)."""
    if page.is_file():
        return Section("Proof that a trigger works (make proof)", "A world small enough to train on a CPU, run "
                       "through the same front doors with a learned judge: base vs trained fidelity with 95 % "
                       "intervals, grids, loss curve, judge accuracy, phase times.",
                       links=[("proof_run/index.html", page)])
    return Section("Proof that a trigger works (make proof)", "Not run yet: `make proof` (a benchmark; "
                   "docs/proof.md) writes proof_run/index.html, linked here once it exists.")


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
    sections.append(proof_section(PROOF_PAGE))
    index = write_index(work / "index.html", "Storyboard Trigger demo", sections,
                        subtitle="Every stage that exists, run through its real script on the sample data and "
                                 "tiny models.")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storyboard.devkit.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for sample data and tiny models")
    args = parser.parse_args(argv)
    started = time.time()
    index = run_demo(args.work, args.seed)
    print(f"\nDemo finished in {time.time() - started:.0f} s. Open: {index.resolve()}")
    return 0


if __name__ == "__main__":
    run_main(main)
