"""Phase 5: the trained folder written (every format, ``storyboard.artifacts.write``), its manifest, the
reload check, the final previews and the summary rows; also what each checkpoint exports.
"""
from __future__ import annotations

import copy
import json
import resource
import time
from pathlib import Path

import torch

from storyboard.artifacts import write
from storyboard.artifacts.comfyui import WorkflowSettings, comfyui_prompt, write_workflow
from storyboard.artifacts.layout import (
    COMFYUI_WORKFLOW_FILE,
    LORA_FILE,
    MANIFEST_FORMAT,
    TEXT_ENCODER_DIR,
    WEBUI_LORA_FILE,
    webui_lora_file,
)
from storyboard.artifacts.samplers import comfyui_sampler, label_for_class
from storyboard.core.records import atomic_write, read_json_object_or_none
from storyboard.train.context import RunContext, TrainResult
from storyboard.train.data import epochs_seen
from storyboard.train.preview import previews
from storyboard.train.tokens import merge_trigger_embedding, trigger_rows


def export_weights(ctx: RunContext, target: Path, step: int, final: bool) -> list[Path]:
    """Write every user-facing format of the current weights into ``target``; returns the files."""
    args, models = ctx.args, ctx.models
    unet = ctx.accelerator.unwrap_model(ctx.model).unet
    te = ctx.accelerator.unwrap_model(ctx.model).text_encoder
    target.mkdir(parents=True, exist_ok=True)
    unet_state = write.lora_state(unet)
    te_state = write.lora_state(te, prefix_text_model=True) if args.text_encoder_mode == "lora" else None
    rows = trigger_rows(te)
    files = [write.save_diffusers_lora(target, unet_state, te_state, write.lora_metadata(models.unet_lora_config),
                                       write.lora_metadata(models.te_lora_config) if te_state else None)]
    tokens = ctx.tokens_info
    comment = "trigger tokens: " + ", ".join(f"{t['token']} ({t['embedding_file']})" for t in tokens)
    webui_name = webui_lora_file(run_name(ctx), None if final else step)
    files += write.save_webui_lora(target, unet_state, te_state, args.rank, args.lora_alpha,
                                   ctx.base_version, comment, name=webui_name)
    files += write.save_embeddings(target, tokens, rows)
    files.append(write_workflow(target, comfyui_settings(ctx, webui_name)))
    if args.text_encoder_mode == "full":
        merged = merge_trigger_embedding(copy.deepcopy(te).float())
        write.save_full_text_encoder(target, merged, models.tokenizer)
        files += sorted(p for p in (target / TEXT_ENCODER_DIR).rglob("*") if p.is_file())
        del merged
    ctx.last_export = {"unet_state": unet_state, "te_state": te_state, "rows": rows}
    manifest = build_manifest(ctx, target, step, files, final)
    files.append(write.write_manifest(target, manifest))
    return files


def run_name(ctx: RunContext) -> str:
    """The run's name, as its LoRA file is named: the output folder's (``train_fs``)."""
    return Path(ctx.args.output_dir).expanduser().resolve().name


def comfyui_settings(ctx: RunContext, lora_name: str) -> WorkflowSettings:
    """``comfyui_workflow.json``: the first trigger's shot prompt on the base with this LoRA, at the
    inference defaults (30 steps, CFG 7.5, the base's own sampler, its native size, seed 0)."""
    base = Path(ctx.base.path).expanduser().resolve()
    ckpt_name = base.name if base.is_file() else f"{base.name}.safetensors"  # how ComfyUI lists a checkpoint
    stems = {t["token"]: Path(t["embedding_file"]).stem for t in ctx.tokens_info}
    first = ctx.tokens_info[0]
    prompt = comfyui_prompt(", ".join([first["token"], first["initializer"], "a person"]), stems)
    config = base / "scheduler" / "scheduler_config.json"
    scheduler_class = (read_json_object_or_none(config) or {}).get("_class_name")  # a single file: SD's PLMS
    sampler_name, scheduler = comfyui_sampler(label_for_class(scheduler_class) or "PLMS")
    size = (ctx.base.sample_size or ctx.args.resolution // 8) * 8
    return WorkflowSettings(
        ckpt_name=ckpt_name, prompt=prompt, lora_name=lora_name, lora_scale=1.0, seed=0, steps=30, cfg=7.5,
        sampler_name=sampler_name, scheduler=scheduler, width=size, height=size, filename_prefix=run_name(ctx),
        prompt_title="shot prompt (trained: " + ", ".join(f"embedding:{s}" for s in stems.values()) + ")")


def build_manifest(ctx: RunContext, target: Path, step: int, files: list[Path], final: bool) -> dict:
    """``trigger_manifest.json``: what inference needs (tokens, base fingerprint, LoRA settings) and
    what the run was (every hyperparameter, steps, losses, speed, memory, versions, file hashes)."""
    args = ctx.args
    hyper = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
             if not k.startswith("debug_")}
    history = ctx.loss_history
    tail = history[-10:]
    return {
        "format": MANIFEST_FORMAT,
        "tokens": ctx.tokens_info,
        "text_encoder_mode": args.text_encoder_mode,
        "base_model": {**ctx.base.model.record(), "path": str(ctx.base.path), "fingerprint": ctx.base_fp,
                       "pipeline": ctx.base.pipeline_class, "version": ctx.base_version,
                       "tokenizer_size": ctx.models.added.base_vocab_size,
                       "prediction_type": ctx.models.noise_scheduler.config.prediction_type},
        "tokenizer_size": len(ctx.models.tokenizer),
        "lora": {"rank": args.rank, "alpha": args.lora_alpha, "scale": args.lora_alpha / args.rank,
                 "dropout": args.lora_dropout, "unet_targets": sorted(ctx.models.unet_lora_config.target_modules),
                 "text_encoder_targets": sorted(ctx.models.te_lora_config.target_modules)
                 if ctx.models.te_lora_config else []},
        "files": {"diffusers_lora": LORA_FILE, "webui_lora": webui_lora_file(run_name(ctx), None if final else step),
                  "webui_lora_alias": WEBUI_LORA_FILE, "comfyui_workflow": COMFYUI_WORKFLOW_FILE,
                  "embeddings": [t["embedding_file"] for t in ctx.tokens_info],
                  "text_encoder": TEXT_ENCODER_DIR if args.text_encoder_mode == "full" else None,
                  "sha256": write.files_table(target, [f for f in files if f.suffix == ".safetensors"])},
        "training": {
            "global_step": step, "max_train_steps": ctx.max_steps, "final": final,
            "epochs": round(epochs_seen(step * args.gradient_accumulation_steps, args.train_batch_size,
                                        ctx.accelerator.num_processes, ctx.num_items), 4),
            "images_seen": step * ctx.global_batch, "num_images": ctx.num_items,
            "num_processes": ctx.accelerator.num_processes, "mixed_precision": ctx.precision,
            "first_loss": history[0] if history else None, "final_loss": history[-1] if history else None,
            "final_loss_mean10": sum(tail) / len(tail) if tail else None,
            "fixed_noise_loss_start": ctx.eval_before, "fixed_noise_loss_end": ctx.eval_after,
            "images_per_s": ctx.images_per_s(),
            "peak_memory_bytes": ctx.train_peak or peak_memory(ctx.accelerator.device),
            "device": str(ctx.accelerator.device), "distributed_type": str(ctx.accelerator.distributed_type),
        },
        "hyperparameters": hyper,
        "versions": write.library_versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def peak_memory(device) -> int:
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB -> bytes; whole process


def finish(ctx: RunContext, out: Path, step: int) -> TrainResult:
    """Final export into ``out``, the reload check, previews, and the summary."""
    files = export_weights(ctx, out, step, final=True)
    state = ctx.last_export
    scale = ctx.args.lora_alpha / ctx.args.rank
    check = write.reload_check(ctx.base.model, out, state["unet_state"], state["te_state"], ctx.tokens_info,
                               state["rows"], scale)
    preview_files = previews(ctx, out, out / "validation" / f"step-{step:06d}", step)
    manifest = build_manifest(ctx, out, step, files, final=True)
    manifest["reload_check"] = check
    manifest["previews"] = [str(p.relative_to(out)) for p in preview_files]
    write.write_manifest(out, manifest)
    write_loss_log(out, ctx.loss_history)

    t = manifest["training"]
    rows: list[tuple[str, object]] = [
        ("steps", f"{step} ({t['epochs']} epochs, {t['images_seen']} images seen of {t['num_images']})"),
        ("processes",
         f"{t['num_processes']} ({t['distributed_type']}, {t['device']}, precision {t['mixed_precision']})"),
        ("tokens", ", ".join(f"{x['token']} (id {x['token_id']})" for x in ctx.tokens_info)),
        ("loss first -> last10", _fmt_pair(t["first_loss"], t["final_loss_mean10"])),
        ("fixed-noise loss", _fmt_pair(t["fixed_noise_loss_start"], t["fixed_noise_loss_end"])),
        ("images/s (after step 1)", t["images_per_s"]),
        ("peak memory", f"{t['peak_memory_bytes'] / 2**30:.2f} GiB"),
    ]
    rows += [(name, f"{info['bytes'] / 1024:.1f} KiB") for name, info in manifest["files"]["sha256"].items()]
    rows.append(("reload check", "ok: every key loaded, every row equal" if check["ok"]
                 else "FAILED: " + "; ".join(check["problems"])))
    rows.append(("previews", f"{len(preview_files)} in {out / 'validation'}" if preview_files else "off"))
    return TrainResult(out, step, 0 if check["ok"] else 1, rows, manifest)


def _fmt_pair(a, b) -> str:
    return "n/a" if a is None or b is None else f"{a:.4f} -> {b:.4f}"


def write_loss_log(out: Path, history: list[float]) -> None:
    with atomic_write(out / "logs" / "loss.jsonl") as fh:
        for i, loss in enumerate(history, start=1):
            fh.write(json.dumps({"step": i, "loss": loss}) + "\n")
