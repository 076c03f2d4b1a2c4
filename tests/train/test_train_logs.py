"""Logs users look at: ``--report_to tensorboard`` (the default) and ``--report_to wandb`` (offline) end to
end. The event and run files hold the loss per step, the learning rates and the preview images."""
from __future__ import annotations

import json

import pytest

from support import run_front_door, user_env
from train_support import FRONT_DOOR, make_dataset, train_args, train_in_process, wandb_history


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("logs") / "Dataset_fin")


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_is_the_default_and_holds_loss_lr_and_previews(tiny_models, data, tmp_path):
    out = tmp_path / "train_fs"
    argv = train_args(tiny_models / "model_sd", data, out, max_train_steps=4, num_validation_images=1,
                      validation_steps=2)
    assert "--report_to" not in argv  # the default
    assert train_in_process(argv) == 0
    events = _events(out / "logs" / "storyboard-trigger")
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    losses = [e.value for e in events.Scalars("loss")]
    history = [json.loads(line)["loss"] for line in (out / "logs" / "loss.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(history, abs=1e-5) and all(v > 0 for v in losses)
    assert {t for t in events.Tags()["scalars"] if t.startswith("lr/")} == {"lr/unet", "lr/text_encoder", "lr/tokens"}
    assert [round(e.value, 8) for e in events.Scalars("lr/unet")] == [1e-4] * 4
    images = events.Images("validation")
    assert [e.step for e in images] == [2, 4]  # every --validation_steps and at the end
    assert all(e.height == 64 and e.width == 64 * 2 for e in images)  # the two tokens' previews side by side
    # negative control: --report_to none writes no event file
    quiet = tmp_path / "quiet"
    assert train_in_process(train_args(tiny_models / "model_sd", data, quiet, "--report_to", "none")) == 0
    assert not list((quiet / "logs").rglob("events.out.tfevents.*"))


def test_wandb_offline_run_holds_loss_lr_and_previews(tiny_models, data, tmp_path):
    out = tmp_path / "train_fs"
    env = user_env(WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_DIR", None)
    env.pop("WANDB_API_KEY", None)
    argv = train_args(tiny_models / "model_sd", data, out, "--report_to", "wandb", max_train_steps=3,
                      num_validation_images=1)
    proc = run_front_door(FRONT_DOOR, *argv, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_file] = list((out / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))  # under --output_dir
    rows = wandb_history(run_file)
    assert [row["_step"] for row in rows] == [1, 2, 3]
    assert all(row["loss"] > 0 and row["lr/unet"] == pytest.approx(1e-4) and "lr/tokens" in row for row in rows)
    final = rows[-1]
    assert final["validation/_type"] == "images/separated" and final["validation/count"] == 2
    assert sorted(final["validation/captions"]) == ["<cu_trg>, a person", "<fs_trg>, a person"]
    media = run_file.parent / "files"
    assert all((media / name).is_file() for name in final["validation/filenames"])
    assert not (tmp_path / "wandb").exists()  # nothing in the current folder
