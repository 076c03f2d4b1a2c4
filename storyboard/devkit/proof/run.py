"""The proof run: the cached world, then the project's own front doors on it, in a folder laid out like
the seed's root (``model_sd/``, ``Dataset_fin/``, ``model_sd_weight/``, ``validation/``), ending with
``index.html`` (``storyboard.devkit.proof.page``).

Steps, each timed, each skipped on a rerun when its output is there and was made from the same inputs
(a stamp per step: the world's fingerprint and the settings that step and those before it used; a
changed stamp removes that step's output and redoes it):

1. the world (``build.build_world``: built once per configuration, cached under the cache root);
2. the judge file (``<work>/judge/shot_judge.safetensors``) and ``model_sd`` (a link to the world's);
3. ``Dataset_fin``: the world's renders as a crawl with Korean tags through collect -> 01 -> 02 -> 03
   -> clustering (``stages``), or (``data_path="direct"``) written straight from the renderer;
4. ``bash shot_trigger_train.sh`` with the recipe below;
5. ``validation/make_validation_jsonl.py``, ``validation/base_valid.sh``, ``validation/validation.sh``,
   with ``JUDGE=<the judge file>``: the report is judged by the world's learned judge.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storyboard.core.cli import UserError
from storyboard.core.records import atomic_write_json
from storyboard.core.runtime import sha256_file
from storyboard.devkit.proof.build import JUDGE_FOLDER, SD_FOLDER, build_world
from storyboard.devkit.proof.config import PhaseClock, WorldConfig
from storyboard.devkit.proof.judge_training import JUDGE_FILE, world_judge_file
from storyboard.devkit.proof.page import write_proof_page
from storyboard.devkit.proof.stages import DATA, METADATA, check_accounting, run_data_stages
from storyboard.devkit.proof.trainset import write_trainset

REPO_ROOT = Path(__file__).resolve().parents[3]
STATE = "proof_state.json"  # the stamp of each finished step
RUN_NAME = "train_proof"    # model_sd_weight/<RUN_NAME>: the trained folder, the report's column name
# What the training-set step writes in the work folder (removed when its inputs change).
DATA_OUTPUTS = ("Dataset_fin", DATA, METADATA, "Dataset_clustering_method")

# The trainer settings the method needed (docs/proof.md): rank-8 LoRA, batch 32, learning rates five
# times the diffusers example's 1e-4 for the UNet LoRA and the token rows. Run f1 (2026-11-30): 300
# steps, base 24 % -> trained 73 %. Lower rates (1e-3 / 1e-4 / 1e-3) stayed near the base; higher
# (1e-2 / 2e-3 / 1e-2) damaged the base (fixed-noise loss up, most images judged "nobody").
RECIPE = ("--max_train_steps", "300", "--train_batch_size", "32", "--rank", "8", "--learning_rate", "5e-3",
          "--text_encoder_lr", "1e-3", "--token_learning_rate", "5e-3")


@dataclass(frozen=True)
class ProofSettings:
    per_shot: int = 200                      # training images per shot size (Dataset_fin)
    data_path: str = "stages"                # stages: crawl -> collect -> 01 -> 02 -> 03 -> clustering;
    #                                          direct: Dataset_fin written straight from the renderer
    train_args: tuple[str, ...] = RECIPE     # passed to shot_trigger_train.sh after the paths
    angles: tuple[str, ...] = ("eye_level", "high", "low")   # validation prompts: every combination
    locations: tuple[str, ...] = ("indoor", "outdoor")
    subjects: tuple[str, ...] = ("a woman", "a person")
    # 3 x 2 x 2 x 6 = 72 images per shot size and model: with 3 seeds (36) the figure moved 15 points
    # between seeds 0-2 and 3-5 (the base's picture depends on the seed more than on the prompt).
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    steps: int = 20                          # sampling: DPM++ 2M, 20 steps, CFG 7.5
    scheduler: str = "dpmpp_2m"
    guidance: float = 7.5
    batch_size: int = 12                     # images per pipeline call

    def to_dict(self) -> dict:
        return asdict(self)


def tiny_settings() -> ProofSettings:
    """The test suite's miniature: a handful of images and steps (no claim about learning)."""
    return ProofSettings(per_shot=4, train_args=("--max_train_steps", "2", "--train_batch_size", "4", "--rank", "2"),
                         angles=("eye_level",), subjects=("a woman",), seeds=(0,), steps=2, batch_size=6)


@dataclass
class Proof:
    work: Path
    cache: Path
    config: WorldConfig
    settings: ProofSettings
    device: str = "auto"
    workers: int = 1
    threads: int = 1
    log: Callable = print
    clock: PhaseClock = field(default_factory=PhaseClock)
    world: Path | None = None
    world_record: dict = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    data_stages: dict = field(default_factory=dict)  # each data stage's summary (read / written / rejected)

    # -- running a front door as a user does ------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), STORYBOARD_NO_PROGRESS="1",
                   OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads), PYTHON=sys.executable,
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        env.update(extra)
        return env

    def run(self, step: str, argv: list[object], env: dict[str, str] | None = None) -> None:
        argv = [str(a) for a in argv]
        shown = " ".join(argv).replace(sys.executable, "python").replace(str(REPO_ROOT) + "/", "")
        self.commands[step] = shown
        self.log(f"$ {shown}")
        log_file = self.work / "logs" / f"{step.replace(' ', '_')}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("w", encoding="utf-8") as out:
            proc = subprocess.run(argv, cwd=self.work, env=env or self.env(), stdout=out, stderr=subprocess.STDOUT,
                                  text=True)
        if proc.returncode != 0:
            tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
            self.log("\n".join(tail))
            raise UserError(f"proof step {step!r} failed (exit {proc.returncode}); its output: {log_file}")
        state = self._state()
        state.setdefault("commands", {})[step] = shown  # the page lists them, also those of earlier runs
        atomic_write_json(self.work / STATE, state)

    # -- stamps: redo a step whose inputs changed -------------------------------------------------
    def _state(self) -> dict:
        path = self.work / STATE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def step(self, name: str, stamp: str, outputs: list[Path], action: Callable[[], None]) -> bool:
        """Run ``action`` under the clock unless ``outputs`` exist with ``stamp`` recorded; True when it ran."""
        state = self._state()
        if state.get(name) == stamp and all(p.exists() for p in outputs):
            self.log(f"[proof] {name}: done before with the same inputs; skipped")
            return False
        for path in outputs:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        with self.clock.phase(name, self.log):
            action()
        state = self._state()
        state[name] = stamp
        atomic_write_json(self.work / STATE, state)
        return True


def stamp_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _world(p: Proof) -> None:
    started = time.perf_counter()
    p.world, p.world_record = build_world(p.cache, p.config, p.workers, p.device, p.log)
    p.clock.seconds["world (build or reuse)"] = round(time.perf_counter() - started, 1)


def _layout(p: Proof) -> Path:
    """``model_sd`` -> the world's SD folder; the world's judge as ``judge/shot_judge.safetensors``."""
    for folder in ("model_sd_weight", "validation", "judge"):
        (p.work / folder).mkdir(parents=True, exist_ok=True)
    link = p.work / SD_FOLDER
    target = (p.world / SD_FOLDER).resolve()
    if link.is_symlink() and link.resolve() != target:
        link.unlink()
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    judge = p.work / "judge" / JUDGE_FILE
    source = world_judge_file(p.world / JUDGE_FOLDER)
    if not judge.is_file() or judge.read_bytes() != source.read_bytes():
        shutil.copyfile(source, judge)
    return judge


def _training_set(p: Proof) -> None:
    cfg = p.config
    if p.settings.data_path == "direct":
        write_trainset(p.work / "Dataset_fin", cfg.render, cfg.seed, p.settings.per_shot, workers=p.workers)
        return
    p.data_stages = run_data_stages(p.work, REPO_ROOT, cfg.render, cfg.seed, p.settings.per_shot, p.workers, p.run)


def _launch_args(p: Proof) -> str:
    args = "--num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no"
    return args + (" --cpu" if p.device == "cpu" else "")


def _train(p: Proof) -> None:
    size = p.config.render.size
    argv = ["bash", REPO_ROOT / "shot_trigger_train.sh", "--pretrained_model_name_or_path", "./model_sd",
            "--train_data_dir", "./Dataset_fin", "--output_dir", f"./model_sd_weight/{RUN_NAME}",
            "--resolution", size, "--dataloader_num_workers", 0, "--num_validation_images", 0,
            "--checkpointing_steps", 100000, "--seed", p.config.seed, *p.settings.train_args]
    p.run("training", argv, p.env(ACCELERATE_LAUNCH_ARGS=_launch_args(p)))


def _validation_env(p: Proof, judge: Path) -> dict[str, str]:
    s = p.settings
    return p.env(BASE_MODEL=str(p.work / SD_FOLDER), PROMPTS=str(p.work / "validation" / "validation.jsonl"),
                 OUTPUT_DIR=str(p.work / "validation" / "output"), STEPS=str(s.steps), SCHEDULER=s.scheduler,
                 GUIDANCE=str(s.guidance), BATCH_SIZE=str(s.batch_size), JUDGE=str(judge),
                 CHECKPOINT=str(p.work / "model_sd_weight" / RUN_NAME), ACCELERATE_ARGS=_launch_args(p),
                 DEVICE="cpu" if p.device == "cpu" else "auto")


def _prompts(p: Proof) -> None:
    s = p.settings
    p.run("validation prompts", [sys.executable, REPO_ROOT / "validation" / "make_validation_jsonl.py",
                                 "--output", p.work / "validation" / "validation.jsonl",
                                 "--shots", *p.config.render.shots, "--angles", *s.angles,
                                 "--locations", *s.locations, "--subjects", *s.subjects,
                                 "--seeds", *s.seeds])


def run_proof(p: Proof) -> Path:
    """Every step above; returns ``<work>/index.html``."""
    p.work.mkdir(parents=True, exist_ok=True)
    p.work = p.work.resolve()
    _world(p)
    judge = _layout(p)
    s, world = p.settings, p.world_record["fingerprint"]
    data_stamp = stamp_of(world, s.per_shot, s.data_path)
    train_stamp = stamp_of(data_stamp, s.train_args)
    prompt_stamp = stamp_of(world, s.angles, s.locations, s.subjects, s.seeds)
    sample_stamp = stamp_of(prompt_stamp, s.steps, s.scheduler, s.guidance)
    out = p.work / "validation" / "output"
    p.step("training set", data_stamp, [p.work / name for name in DATA_OUTPUTS], lambda: _training_set(p))
    if s.data_path == "stages" and not p.data_stages:  # made by an earlier run: its stages' figures
        p.data_stages = check_accounting(p.work, s.per_shot * len(p.config.render.shots))
    p.step("training", train_stamp, [p.work / "model_sd_weight" / RUN_NAME], lambda: _train(p))
    p.step("validation prompts", prompt_stamp, [p.work / "validation" / "validation.jsonl"], lambda: _prompts(p))
    env = _validation_env(p, judge)
    p.step("base validation", sample_stamp, [out / "base"],
           lambda: p.run("base validation", ["bash", REPO_ROOT / "validation" / "base_valid.sh", "--no-report"], env))
    # validation.sh writes the report with the learned judge at its end; a changed judge file redoes it.
    trained_stamp = stamp_of(sample_stamp, train_stamp, sha256_file(judge))
    p.step("trained validation + report", trained_stamp, [out / RUN_NAME, out / "report"],
           lambda: p.run("trained validation + report", ["bash", REPO_ROOT / "validation" / "validation.sh"], env))
    p.commands = {**p._state().get("commands", {}), **p.commands}
    with p.clock.phase("page", p.log):
        index = write_proof_page(p, judge, RUN_NAME)
    return index
