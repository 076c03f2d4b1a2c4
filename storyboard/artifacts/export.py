"""The files a training run hands to users, and the check that each one loads back.

In ``--output_dir`` (and in every ``checkpoint-N/``):

``pytorch_lora_weights.safetensors``
    UNet (+ text-encoder) LoRA in diffusers' format, with the LoRA config (rank, alpha, targets) in
    the file's metadata, so ``pipe.load_lora_weights(output_dir)`` applies the strength trained.
    Text-encoder keys are written with the ``text_model.`` prefix that both old and new
    transformers layouts load.
``lora_webui.safetensors``
    The same LoRA with kohya / A1111 key names (``lora_unet_*``, ``lora_te_*``, ``lora_down`` /
    ``lora_up``) and one ``.alpha`` per module holding the alpha actually trained. (diffusers'
    ``convert_state_dict_to_kohya`` writes alpha = rank whatever alpha was, which changes the
    strength when alpha != rank.) No embeddings inside: bundled ``bundle_emb`` keys make diffusers
    refuse the file and ComfyUI ignores them.
``embeddings/<stem>.safetensors``
    One file per trigger token, one ``(1, dim)`` tensor under the key ``emb_params``:
    ``pipe.load_textual_inversion(file, token="<fs_trg>")``; the A1111 WebUI and ComfyUI load the
    same file (WebUI prompt word: the file stem ``fs_trg``; ComfyUI: ``embedding:fs_trg``).
``text_encoder/`` + ``tokenizer/``
    Only with ``--text_encoder_mode full``: the tuned encoder (its table holds the token rows) and
    the tokenizer with the tokens added.
``trigger_manifest.json``
    Tokens, ids, initializers, the base model's fingerprint, every hyperparameter, steps, losses,
    library versions, the files with their SHA-256, and the reload check's result.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from storyboard.core.records import atomic_write_json

DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"
WEBUI_LORA = "lora_webui.safetensors"
EMBEDDINGS_DIR = "embeddings"
MANIFEST = "trigger_manifest.json"
EMBEDDING_KEY = "emb_params"
MANIFEST_FORMAT = "storyboard-trigger/1"

UNET_ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_FF_TARGETS = ["ff.net.0.proj", "ff.net.2"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


# --------------------------------------------------------------------------------------------
# Base model fingerprint
# --------------------------------------------------------------------------------------------
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_diffusers_version", "transformers_version", "architectures",
                         "dtype", "torch_dtype", "_commit_hash"}


def _weight_file(folder: Path) -> Path | None:
    """The component's main (non-variant) weight file, else any."""
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                 "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))
    return files[0] if files else None


def _sample_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last MiB: cheap on multi-GB weights, still content-based."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(size - chunk, chunk))
            h.update(fh.read(chunk))
    return h.hexdigest()


def base_fingerprint(folder: str | os.PathLike) -> str:
    """A fingerprint of an SD base folder: its tokenizer files, the UNet and text-encoder configs
    (minus version stamps) and weight files (size + first/last MiB). Two copies of the same model
    match; a different base (or a fine-tune of it) does not. ``"sha256:<hex>"``."""
    folder = Path(folder)
    h = hashlib.sha256()
    for part in ("unet", "text_encoder"):
        config = json.loads((folder / part / "config.json").read_text(encoding="utf-8"))
        config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(f"{part}/config:{json.dumps(config, sort_keys=True)}\n".encode())
        weights = _weight_file(folder / part)
        h.update(f"{part}/weights:{_sample_digest(weights) if weights else 'none'}\n".encode())
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        path = folder / "tokenizer" / name
        if path.is_file():
            h.update(f"tokenizer/{name}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# State dicts from the trained modules
# --------------------------------------------------------------------------------------------
def lora_state(model, prefix_text_model: bool = False) -> dict[str, torch.Tensor]:
    """peft's LoRA tensors of ``model`` (fp32, CPU, contiguous); text-encoder names get ``text_model.``."""
    from peft import get_peft_model_state_dict

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
    from diffusers import StableDiffusionPipeline

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lora-") as staging:
        StableDiffusionPipeline.save_lora_weights(
            staging, unet_lora_layers=dict(unet_state), text_encoder_lora_layers=dict(te_state) if te_state else None,
            unet_lora_adapter_metadata=unet_meta, text_encoder_lora_adapter_metadata=te_meta if te_state else None,
            weight_name=DIFFUSERS_LORA, safe_serialization=True)
        os.replace(Path(staging) / DIFFUSERS_LORA, out_dir / DIFFUSERS_LORA)
    return out_dir / DIFFUSERS_LORA


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
                    base_version: str, comment: str) -> Path:
    from safetensors.torch import save_file

    metadata = {
        # What kohya sd-scripts writes and the WebUI / ComfyUI info panels show.
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
        "ss_base_model_version": base_version, "ss_v2": str(base_version == "sd_v2"),
        "ss_training_comment": comment, "format": "pt",
    }
    path = out_dir / WEBUI_LORA
    tmp = out_dir / f".{WEBUI_LORA}.tmp-{os.getpid()}"
    save_file(to_kohya(unet_state, te_state, alpha), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def embedding_path(out_dir: Path, token: str) -> Path:
    return out_dir / EMBEDDINGS_DIR / f"{token.strip('<>')}.safetensors"


def save_embeddings(out_dir: Path, tokens: Sequence[Mapping], rows: torch.Tensor) -> list[Path]:
    """One file per token: ``{"emb_params": rows[i:i+1]}`` (fp32)."""
    from safetensors.torch import save_file

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
    for name, obj in (("text_encoder", text_encoder), ("tokenizer", tokenizer)):
        tmp = out_dir / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        obj.save_pretrained(tmp)
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)


def write_manifest(out_dir: Path, manifest: Mapping) -> Path:
    atomic_write_json(out_dir / MANIFEST, dict(manifest))
    return out_dir / MANIFEST


def read_manifest(out_dir: str | os.PathLike) -> dict:
    return json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))


def files_table(out_dir: Path, paths: Iterable[Path]) -> dict[str, dict]:
    return {str(p.relative_to(out_dir)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths}


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

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
@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' notes while diffusers grows the table for a textual inversion
    ("The new embeddings will be initialized from a multivariate normal ..."): the row is
    overwritten by the loaded embedding right after."""
    import transformers

    before = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(before)


def _loaded_lora(model, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    from peft.tuners.lora import LoraLayer

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
    return {"modules": len(expected), "loaded": len(expected) - len(missing), "missing": missing[:5],
            "mismatched": mismatched[:5], "unexpected": max(len(loaded) - len(expected) + len(missing), 0)}


def reload_check(base: str | os.PathLike, out_dir: str | os.PathLike, unet_state: Mapping, te_state: Mapping | None,
                 tokens: Sequence[Mapping], rows: torch.Tensor, scale: float) -> dict:
    """Load each exported file into a fresh fp32 CPU pipeline with plain diffusers calls and compare
    every LoRA matrix, every scale and every token row with what training holds. Returns a report
    whose ``ok`` is True only when nothing was left out or changed."""
    with quiet_transformers():
        return _reload_check(base, out_dir, unet_state, te_state, tokens, rows, scale)


def _reload_check(base, out_dir, unet_state, te_state, tokens, rows, scale) -> dict:
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    full = manifest_path.is_file() and read_manifest(out_dir).get("text_encoder_mode") == "full"
    kwargs = {}
    if full:
        from transformers import CLIPTextModel, CLIPTokenizer

        kwargs = {"text_encoder": CLIPTextModel.from_pretrained(out_dir / "text_encoder", dtype=torch.float32),
                  "tokenizer": CLIPTokenizer.from_pretrained(out_dir / "tokenizer")}
    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False, **kwargs)
    report: dict = {}
    expected_unet, expected_te = lora_modules(unet_state), lora_modules(te_state or {})
    for label, weight_name in (("diffusers_lora", DIFFUSERS_LORA), ("webui_lora", WEBUI_LORA)):
        adapter = f"check_{label}"
        pipe.load_lora_weights(out_dir, weight_name=weight_name, adapter_name=adapter)
        report[label] = {"unet": _compare_lora(expected_unet, _loaded_lora(pipe.unet, adapter), scale)}
        if expected_te:
            report[label]["text_encoder"] = _compare_lora(expected_te, _loaded_lora(pipe.text_encoder, adapter), scale)
        pipe.unload_lora_weights()

    emb_report = {}
    for i, token in enumerate(tokens):
        if full:  # the tuned encoder already holds the rows; the files are for other tools
            token_id = pipe.tokenizer.convert_tokens_to_ids(token["token"])
        else:
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
            if r["missing"] or r["mismatched"] or r["unexpected"]:
                problems.append(f"{label}/{part}: {len(r['missing'])} missing, {len(r['mismatched'])} changed")
    for token, r in emb_report.items():
        if not (r["one_id"] and r["row_equal"]):
            problems.append(f"embedding {token}: {'row changed' if r['one_id'] else 'not one token'}")
    report["ok"] = not problems
    report["problems"] = problems
    return report
