"""The trainer's writers (every file of the trained folder, see the package docstring) and the reload
check that proves each one loads back through plain diffusers.

Every file is staged under a temporary name and renamed into place, so an interrupted save leaves the
previous file or the new one, never half of one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from storyboard.artifacts.base_load import load_base_pipeline
from storyboard.artifacts.base_model import BaseModel, resolve_base
from storyboard.artifacts.layout import (
    EMBEDDING_KEY,
    LORA_FILE,
    MANIFEST_FILE,
    TEXT_ENCODER_DIR,
    TOKENIZER_DIR,
    WEBUI_LORA_FILE,
    embedding_path,
)
from storyboard.artifacts.load import quiet_transformers
from storyboard.artifacts.read import read_manifest
from storyboard.core.records import atomic_write_json
from storyboard.core.runtime import sha256_file


# --------------------------------------------------------------------------------------------
# State dicts from the trained modules
# --------------------------------------------------------------------------------------------
def lora_state(model, prefix_text_model: bool = False) -> dict[str, torch.Tensor]:
    """peft's LoRA tensors of ``model`` (fp32, CPU, contiguous); text-encoder names get ``text_model.``."""
    state = get_peft_model_state_dict(model)
    out = {}
    for key, tensor in state.items():
        if prefix_text_model and not key.startswith("text_model."):
            key = "text_model." + key
        out[key] = tensor.detach().float().cpu().contiguous()
    return out


def lora_metadata(config) -> dict:
    """A LoraConfig as the JSON-able dict diffusers stores in (and reads from) the file's metadata."""
    value = config.to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in value.items()}


def lora_modules(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, B)}`` from peft keys ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``."""
    out = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            out[module] = (a, state[module + ".lora_B.weight"])
    return out


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
def save_diffusers_lora(out_dir: Path, unet_state: Mapping, te_state: Mapping | None,
                        unet_meta: dict, te_meta: dict | None) -> Path:
    """``pytorch_lora_weights.safetensors`` through diffusers' own writer (staged, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lora-") as staging:
        StableDiffusionPipeline.save_lora_weights(
            staging, unet_lora_layers=dict(unet_state), text_encoder_lora_layers=dict(te_state) if te_state else None,
            unet_lora_adapter_metadata=unet_meta, text_encoder_lora_adapter_metadata=te_meta if te_state else None,
            weight_name=LORA_FILE, safe_serialization=True)
        os.replace(Path(staging) / LORA_FILE, out_dir / LORA_FILE)
    return out_dir / LORA_FILE


def to_kohya(unet_state: Mapping, te_state: Mapping | None, alpha: float) -> dict[str, torch.Tensor]:
    """kohya / A1111 names: ``lora_unet_<module_with_underscores>.lora_down.weight`` etc., and ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    for prefix, state in (("lora_unet", unet_state), ("lora_te", te_state or {})):
        for module, (a, b) in lora_modules(state).items():
            name = f"{prefix}_{module.replace('.', '_')}"
            out[f"{name}.lora_down.weight"] = a.contiguous()
            out[f"{name}.lora_up.weight"] = b.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def save_webui_lora(out_dir: Path, unet_state: Mapping, te_state: Mapping | None, rank: int, alpha: float,
                    base_version: str, comment: str, name: str = WEBUI_LORA_FILE) -> list[Path]:
    """The kohya-keyed LoRA as ``name`` (the file a user copies into the WebUI's or ComfyUI's
    ``models/Lora``: its stem is the ``<lora:NAME:...>`` word), and the same bytes as
    ``lora_webui.safetensors`` (a hard link where the file system has them, else a copy) for tools
    that look for the fixed name. Returns the files written, the named one first."""
    metadata = {
        # What kohya sd-scripts writes and the WebUI / ComfyUI info panels show.
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
        "ss_base_model_version": base_version, "ss_v2": str(base_version == "sd_v2"),
        "ss_output_name": Path(name).stem, "ss_training_comment": comment, "format": "pt",
    }
    path = out_dir / name
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    save_file(to_kohya(unet_state, te_state, alpha), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    if name == WEBUI_LORA_FILE:
        return [path]
    alias, tmp = out_dir / WEBUI_LORA_FILE, out_dir / f".{WEBUI_LORA_FILE}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here (some network and FAT file systems): a copy
        shutil.copyfile(path, tmp)
    os.replace(tmp, alias)
    return [path, alias]


def save_embeddings(out_dir: Path, tokens: Sequence[Mapping], rows: torch.Tensor) -> list[Path]:
    """One file per token: ``{"emb_params": rows[i:i+1]}`` (fp32)."""
    paths = []
    for i, token in enumerate(tokens):
        path = embedding_path(out_dir, token["token"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        meta = {"token": token["token"], "initializer": token["initializer"], "format": "pt"}
        save_file({EMBEDDING_KEY: rows[i : i + 1].detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def save_full_text_encoder(out_dir: Path, text_encoder, tokenizer) -> None:
    """``text_encoder/`` and ``tokenizer/`` (diffusers subfolders), replaced as whole folders."""
    for name, obj in ((TEXT_ENCODER_DIR, text_encoder), (TOKENIZER_DIR, tokenizer)):
        tmp = out_dir / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        obj.save_pretrained(tmp)
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)


def write_manifest(out_dir: Path, manifest: Mapping) -> Path:
    atomic_write_json(out_dir / MANIFEST_FILE, dict(manifest))
    return out_dir / MANIFEST_FILE


def files_table(out_dir: Path, paths: Iterable[Path]) -> dict[str, dict]:
    return {str(p.relative_to(out_dir)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths}


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


# --------------------------------------------------------------------------------------------
# Reload check: every file through plain diffusers, every key landed
# --------------------------------------------------------------------------------------------
def _loaded_lora(model, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            out[name.removeprefix("text_model.")] = (module.lora_A[adapter].weight, module.lora_B[adapter].weight,
                                                    float(module.scaling[adapter]))
    return out


def _same(loaded: torch.Tensor, saved: torch.Tensor) -> bool:
    """Bit-equal once the saved (fp32) value is cast to the dtype it was loaded in."""
    loaded = loaded.detach().cpu()
    return torch.equal(loaded, saved.to(loaded.dtype))


def _compare_lora(expected: Mapping, loaded: Mapping, scale: float) -> dict:
    missing, mismatched = [], []
    for module, (a, b) in expected.items():
        got = loaded.get(module.removeprefix("text_model."))
        if got is None:
            missing.append(module)
        elif not (_same(got[0], a) and _same(got[1], b) and abs(got[2] - scale) < 1e-6):
            mismatched.append(module)
    # The lists hold the first five names; the counts are the whole story.
    return {"modules": len(expected), "loaded": len(expected) - len(missing), "missing": missing[:5],
            "mismatched": mismatched[:5], "missing_count": len(missing), "mismatched_count": len(mismatched),
            "unexpected": max(len(loaded) - len(expected) + len(missing), 0)}


def reload_check(base: BaseModel | str | os.PathLike, out_dir: str | os.PathLike, unet_state: Mapping,
                 te_state: Mapping | None, tokens: Sequence[Mapping], rows: torch.Tensor, scale: float) -> dict:
    """Load each exported file into a fresh fp32 CPU pipeline with plain diffusers calls and compare
    every LoRA matrix, every scale and every token row with what training holds. Returns a report
    whose ``ok`` is True only when nothing was left out or changed."""
    with quiet_transformers():
        return _reload_check(base, out_dir, unet_state, te_state, tokens, rows, scale)


def _reload_check(base, out_dir, unet_state, te_state, tokens, rows, scale) -> dict:
    out_dir = Path(out_dir)
    full = (out_dir / MANIFEST_FILE).is_file() and read_manifest(out_dir).get("text_encoder_mode") == "full"
    kwargs = {}
    if full:
        kwargs = {"text_encoder": CLIPTextModel.from_pretrained(out_dir / TEXT_ENCODER_DIR, dtype=torch.float32),
                  "tokenizer": CLIPTokenizer.from_pretrained(out_dir / TOKENIZER_DIR)}
    base = base if isinstance(base, BaseModel) else resolve_base(base)
    pipe = load_base_pipeline(base, dtype=torch.float32, **kwargs)
    report: dict = {}
    expected_unet, expected_te = lora_modules(unet_state), lora_modules(te_state or {})
    for label, weight_name in (("diffusers_lora", LORA_FILE), ("webui_lora", WEBUI_LORA_FILE)):
        adapter = f"check_{label}"
        pipe.load_lora_weights(out_dir, weight_name=weight_name, adapter_name=adapter)
        report[label] = {"unet": _compare_lora(expected_unet, _loaded_lora(pipe.unet, adapter), scale)}
        if expected_te:
            report[label]["text_encoder"] = _compare_lora(expected_te, _loaded_lora(pipe.text_encoder, adapter), scale)
        pipe.unload_lora_weights()

    emb_report = {}
    for i, token in enumerate(tokens):
        if not full:  # a fully tuned encoder already holds the rows; the files are for other tools
            pipe.load_textual_inversion(str(embedding_path(out_dir, token["token"])), token=token["token"])
        token_id = pipe.tokenizer.convert_tokens_to_ids(token["token"])
        row = pipe.text_encoder.get_input_embeddings().weight[token_id]
        ids = pipe.tokenizer(token["token"], add_special_tokens=False).input_ids
        emb_report[token["token"]] = {"token_id": token_id, "one_id": list(ids) == [token_id],
                                      "row_equal": _same(row, rows[i].float().cpu())}
    report["embeddings"] = emb_report
    problems = []
    for label in ("diffusers_lora", "webui_lora"):
        for part, r in report[label].items():
            if r["missing_count"] or r["mismatched_count"] or r["unexpected"]:
                problems.append(f"{label}/{part}: {r['missing_count']} missing, {r['mismatched_count']} changed")
    for token, r in emb_report.items():
        if not (r["one_id"] and r["row_equal"]):
            problems.append(f"embedding {token}: {'row changed' if r['one_id'] else 'not one token'}")
    report["ok"] = not problems
    report["problems"] = problems
    return report
