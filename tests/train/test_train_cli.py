"""The trainer as users start it: bad inputs (one line, exit code 2), the seed's command through
shot_trigger_train.sh and `accelerate launch`, and a run on two processes."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from support import run_command, run_front_door, user_env
from train_support import FRONT_DOOR, LAUNCHER, fast_flags, make_dataset, run_trainer, train_args


@pytest.fixture(scope="module")
def work(tiny_models, tmp_path_factory):
    """A folder laid out like the seed's root: model_sd/ and Dataset_fin/ side by side."""
    root = tmp_path_factory.mktemp("seed_root")
    (root / "model_sd").symlink_to(tiny_models / "model_sd", target_is_directory=True)
    make_dataset(root / "Dataset_fin", n=4)
    return root


def _bad_inputs(root, base):
    """(name, extra argv, expected fragment of the one error line)."""
    data = make_dataset(root / "good", n=2)
    empty = root / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("\n", encoding="utf-8")
    holes = make_dataset(root / "holes", n=2)
    (holes / "images" / "001.png").unlink()
    not_a_dir = root / "file.txt"
    not_a_dir.write_text("x")
    not_sd = root / "not_sd"
    not_sd.mkdir()
    (not_sd / "weights.ckpt").write_bytes(b"\0" * 16)
    # a base whose tokenizer already knows <fs_trg> (e.g. an earlier fine-tune used as the base)
    has_token = root / "has_token"
    has_token.mkdir()
    for part in base.iterdir():
        if part.name != "tokenizer":
            (has_token / part.name).symlink_to(part)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    tok.add_tokens(["<fs_trg>"])
    tok.save_pretrained(has_token / "tokenizer")
    return [
        ("missing data folder", ["--train_data_dir", str(root / "nope")], "--train_data_dir"),
        ("data folder is a file", ["--train_data_dir", str(not_a_dir)], "is a file, not a folder"),
        ("empty data set", ["--train_data_dir", str(empty)], "is empty"),
        ("record with missing image", ["--train_data_dir", str(holes)], "images/001.png not found"),
        ("token already in vocabulary", ["--train_data_dir", str(data), "--pretrained_model_name_or_path",
                                         str(has_token)], "<fs_trg> already exists in the tokenizer"),
        ("initializer tokenizes to nothing", ["--train_data_dir", str(data), "--new_tokens", "<fs_trg>,<cu_trg>",
                                              "--token_initializer", "full shot,\u3000"], "tokenizes to nothing"),
        ("base is not a diffusers SD folder", ["--train_data_dir", str(data), "--pretrained_model_name_or_path",
                                               str(not_sd)], "not a diffusers Stable Diffusion folder"),
        ("rank 0", ["--train_data_dir", str(data), "--rank", "0"], "--rank must be at least 1"),
        ("resolution not a multiple of 8", ["--train_data_dir", str(data), "--resolution", "100"],
         "--resolution 100 is not a positive multiple of 8"),
    ]


def test_each_bad_input_is_one_clear_line(tiny_models, tmp_path):
    base = tiny_models / "model_sd"
    failures = []
    for name, extra, fragment in _bad_inputs(tmp_path, base):
        argv = ["--pretrained_model_name_or_path", str(base), "--output_dir", str(tmp_path / "out"),
                *fast_flags(), *extra]
        proc = run_trainer(argv, cwd=tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        ok = (proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1
              and lines[0].startswith("train_trigger02.py: error: ") and fragment in lines[0])
        if not ok:
            failures.append(f"{name}: rc={proc.returncode} stderr={proc.stderr[-600:]!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_fp16_on_the_cpu_is_one_clear_line(work, tmp_path):
    """accelerate turns autocast off for fp16 on the CPU, so the fp16 UNet would meet fp32 latents at
    step 1 (a traceback); the trainer says so before loading anything."""
    argv = train_args(work / "model_sd", work / "Dataset_fin", tmp_path / "out", mixed_precision="fp16")
    proc = run_front_door(FRONT_DOOR, *argv, cwd=tmp_path, env=user_env(CUDA_VISIBLE_DEVICES=""))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("train_trigger02.py: error: --mixed_precision fp16 needs a CUDA GPU")
    assert "bf16" in lines[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("cuda, env, flag, expected", [
    (False, {"ACCELERATE_MIXED_PRECISION": "fp16"}, "auto", "took fp16 from the accelerate configuration"),
    (True, {"ACCELERATE_USE_CPU": "True"}, "fp16", "--mixed_precision fp16 needs a CUDA GPU"),  # launch --cpu
])
def test_fp16_refused_whenever_the_run_lands_on_the_cpu(monkeypatch, cuda, env, flag, expected):
    import torch

    from storyboard.core.cli import UserError
    from storyboard.train.args import check_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match=expected):
        check_precision(flag)


def test_precision_auto_and_bf16_resolve_on_the_cpu(monkeypatch):
    import torch

    from storyboard.train.args import check_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert check_precision("auto") == "no" and check_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert check_precision("auto") == "bf16"


def test_xformers_that_cannot_run_is_one_line(tiny_models):
    """The flag's check only asks whether xformers is installed; enabling it can still fail (no CUDA, a
    wheel built for another torch, or, here, not installed): one line, not diffusers' traceback."""
    from diffusers import UNet2DConditionModel

    from storyboard.core.cli import UserError
    from storyboard.train.models import enable_xformers

    unet = UNet2DConditionModel.from_pretrained(tiny_models / "model_sd", subfolder="unet")
    with pytest.raises(UserError, match="xformers does not work here .*drop the flag") as err:
        enable_xformers(unet)
    assert "\n" not in str(err.value)


def test_seed_command_verbatim_through_the_launcher(work):
    """The seed's README command, from a folder laid out like the seed's root (the launcher finds
    train_trigger02.py beside itself), plus flags that keep it short."""
    cmd = ["bash", str(LAUNCHER), "--pretrained_model_name_or_path", "./model_sd", "--train_data_dir", "./Dataset_fin",
           "--output_dir", "./model_sd_weight/train_fs",
           "--max_train_steps", "3", "--resolution", "64", "--train_batch_size", "2", "--dataloader_num_workers", "0",
           "--num_validation_images", "1", "--validation_inference_steps", "2", "--checkpointing_steps", "2"]
    proc = run_command(cmd, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Accelerate` version" in proc.stderr or "accelerate environment" in proc.stderr  # config logged
    out = work / "model_sd_weight" / "train_fs"
    manifest = json.loads((out / "trigger_manifest.json").read_text())
    for name in ("pytorch_lora_weights.safetensors", "lora_webui.safetensors", "train_fs.safetensors",
                 "comfyui_workflow.json", "embeddings/fs_trg.safetensors", "embeddings/cu_trg.safetensors",
                 "checkpoint-2/pytorch_lora_weights.safetensors"):
        assert (out / name).is_file(), name
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # the launcher reports to tensorboard
    assert manifest["reload_check"]["ok"]
    hyper = manifest["hyperparameters"]
    # the launcher's variables arrive, and a flag on the command line wins over them
    assert hyper["rank"] == 16 and hyper["cache_latents"] is True and hyper["snr_gamma"] == 5.0
    assert hyper["max_train_steps"] == 3 and hyper["resolution"] == 64 and manifest["training"]["global_step"] == 3
    assert "reload check" in proc.stdout and "ok: every key loaded" in proc.stdout


def test_two_processes_count_steps_once_and_only_the_main_one_writes(work, tmp_path):
    out = tmp_path / "ddp"
    argv = train_args(work / "model_sd", work / "Dataset_fin", out, max_train_steps=3, train_batch_size=1,
                      checkpointing_steps=2, num_validation_images=1, validation_inference_steps=2)
    env = user_env(CUDA_VISIBLE_DEVICES="", ACCELERATE_LAUNCH_ARGS="--multi_gpu --num_processes 2")
    accelerate = shutil.which("accelerate", path=env["PATH"])
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
           str(LAUNCHER.parent / "train_trigger02.py"), *argv]
    proc = run_command(cmd, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "trigger_manifest.json").read_text())
    training = manifest["training"]
    assert training["num_processes"] == 2 and "MULTI_CPU" in training["distributed_type"]
    assert training["global_step"] == 3  # not 6: steps are counted once
    assert training["images_seen"] == 3 * 1 * 2 and training["epochs"] == 1.5  # 4 images, 2 per step
    losses = (out / "logs" / "loss.jsonl").read_text().splitlines()
    assert len(losses) == 3
    assert proc.stdout.count("training: ") == 1  # one summary, from the main process
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000003"]
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert not leftovers
    assert manifest["reload_check"]["ok"]
    assert os.environ.get("ACCELERATE_LAUNCH_ARGS") is None  # the test did not leak settings
