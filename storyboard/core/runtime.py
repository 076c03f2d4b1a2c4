"""Where and how a stage runs: the device, the weights' precision, file hashes, shards, quiet libraries.

Every stage that loads a model asks here, so ``--device`` and ``--dtype`` mean the same thing in each
front door:

* ``--device``: ``auto`` (CUDA, else Apple's MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
* ``--dtype``: ``auto``, ``fp32``, ``fp16``, ``bf16`` (the spelling of accelerate's
  ``--mixed_precision`` and of the WebUI); the long torch names ``float32``, ``float16`` and
  ``bfloat16``, which the line-art stage used to take, are accepted as the same values.
* ``--shard i/n``: shards numbered ``0..n-1``; no shard given is the one shard ``0/1``, the whole input.

torch is imported inside the functions that need it: the metadata stages use the hashes and shards
here and never load torch (importing it costs seconds and a few hundred MB).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storyboard.core.cli import UserError

DTYPES = ("auto", "fp32", "fp16", "bf16")
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16", "float": "fp32"}
_HASH_CACHE: dict[tuple[str, int, int, bool], str] = {}


# ------------------------------------------------------------------------------------------------
# Devices and precision
# ------------------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> Any:
    """``--device`` -> a ``torch.device``; a device this machine lacks is a ``UserError``."""
    import torch  # noqa: PLC0415 (torch only when a device is asked for: the metadata stages use this module without it)

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {device!r} (cuda, cuda:N, mps, cpu or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    return dev


def dtype_name(value: str) -> str:
    """One spelling for ``--dtype`` (an argparse ``type=``): ``float16`` -> ``fp16`` and so on."""
    name = str(value).strip().lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(DTYPES)}; "
                                         "float32, float16 and bfloat16 are accepted too)")
    return name


def add_dtype_argument(group: Any, help_auto: str = "fp16 on a GPU, fp32 elsewhere") -> None:
    """``--dtype`` with the one spelling (both old spellings accepted)."""
    group.add_argument("--dtype", default="auto", type=dtype_name, metavar="{" + ",".join(DTYPES) + "}",
                       help=f"weights' precision; auto = {help_auto} (default: %(default)s)")


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``--dtype`` on ``device`` -> a ``torch.dtype``; fp16 on a CPU is a ``UserError`` (torch has no fast
    fp16 kernels there and accelerate no fp16 autocast)."""
    import torch  # noqa: PLC0415 (as above)

    name = dtype_name(dtype or "auto")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type == "cpu":
        raise UserError("--dtype fp16 needs a GPU; on CPU use fp32 (or bf16)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


# ------------------------------------------------------------------------------------------------
# Hashes
# ------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, skip_safetensors_header: bool = False) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime) for this process. With
    ``skip_safetensors_header`` it is the WebUI's "AutoV3" hash: the tensor data only."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, skip_safetensors_header)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            if skip_safetensors_header:
                header_len = int.from_bytes(fh.read(8), "little")
                fh.seek(8 + header_len)
            while block := fh.read(1 << 20):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


# ------------------------------------------------------------------------------------------------
# Shards
# ------------------------------------------------------------------------------------------------
def parse_shard(value: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; nothing given -> ``(0, 1)``, the whole input."""
    if value is None or str(value).strip() == "":
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match:
        raise UserError(f"--shard must look like i/n, e.g. 0/4 (got {value!r})")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UserError(f"--shard {value}: shards are numbered 0..n-1, so i must be below n")
    return index, count


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------
def quiet_libraries(level: int = logging.ERROR) -> None:
    """The libraries' own loading bars and notices would drown our one progress bar: their bars off,
    their messages from ``level`` up (the trainer's main process keeps warnings)."""
    import diffusers  # noqa: PLC0415 (only the model stages call this; the others never import diffusers)
    import transformers  # noqa: PLC0415

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity(level)


# ------------------------------------------------------------------------------------------------
# Processes under `accelerate launch`
# ------------------------------------------------------------------------------------------------
def wants_cpu(device: str | None) -> bool:
    """Whether processes started by ``accelerate launch`` should join a CPU (gloo) group."""
    import torch  # noqa: PLC0415 (as in resolve_device)

    return (device == "cpu" or (device in ("auto", None, "") and not torch.cuda.is_available())
            or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))


@dataclass
class Processes:
    """This process's place among ``accelerate launch`` processes (0 of 1 when not launched so)."""

    index: int = 0
    count: int = 1
    state: Any = None  # accelerate's PartialState when launched, else None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        if self.state is not None and self.count > 1:
            self.state.wait_for_everyone()


def current_processes(device: str | None = "auto") -> Processes:
    """Under ``accelerate launch`` (WORLD_SIZE > 1) each process takes its own share; accelerate's
    ``PartialState`` says which. A plain ``python`` run is one process and never touches
    torch.distributed.

    Several CPU processes come from ``accelerate launch --multi_gpu --num_processes N`` with ``--device
    cpu`` or on a machine without a GPU (``--cpu`` alone starts one process unless MPI is installed):
    they join one gloo group, which ``PartialState(cpu=True)`` sets up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState  # noqa: PLC0415 (only under `accelerate launch`)

    state = PartialState(cpu=wants_cpu(device))
    return Processes(state.process_index, state.num_processes, state)
