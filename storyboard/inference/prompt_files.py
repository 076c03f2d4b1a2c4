"""Where prompts come from: ``inference_trigger.py --prompts-file`` and ``validation/validation.jsonl``.

``make_validation_records`` builds the validation prompt set from the shot vocabulary (shot size x
angle x location x subjects x seeds); ``validation/make_validation_jsonl.py`` writes it as
``validation/validation.jsonl``, a file meant to be edited by hand afterwards, which
``read_validation_prompts`` reads back (the validation run and its report both read it).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from storyboard.core.cli import UserError
from storyboard.core.records import read_jsonl
from storyboard.core.vocabulary import Term, Vocabulary


# --------------------------------------------------------------------------------------------
# inference_trigger.py --prompts-file
# --------------------------------------------------------------------------------------------
def read_prompts_file(path: str | os.PathLike) -> list[dict]:
    """A .txt (one prompt a line, ``#`` comments) or .jsonl (objects with ``prompt`` and optionally
    ``negative_prompt``, ``seed``, ``shot``/``shot_size``, ``id``) file -> records."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    records: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for item in read_jsonl(path):
            if item.error:
                raise UserError(f"{path} line {item.line}: {item.error.detail}")
            record = item.record
            if not isinstance(record.get("prompt"), str):
                raise UserError(f"{path} line {item.line}: needs a text field 'prompt'")
            if "seed" in record and not isinstance(record["seed"], int):
                raise UserError(f"{path} line {item.line}: 'seed' must be a whole number")
            record.setdefault("line", item.line)
            records.append(record)
    else:
        text = path.read_text(encoding="utf-8-sig")
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                records.append({"prompt": line, "line": number})
    if not records:
        raise UserError(f"{path} holds no prompts")
    return records


# --------------------------------------------------------------------------------------------
# validation.jsonl
# --------------------------------------------------------------------------------------------
def _pick(kind: str, wanted: Sequence[str] | None, vocab: Vocabulary) -> list[Term]:
    terms = vocab.of_kind(kind)
    if not wanted:
        return list(terms)
    picked = []
    for value in wanted:
        term = vocab.lookup(value, kind=kind)
        if term is None:
            raise UserError(f"unknown {kind.replace('_', ' ')} {value!r}; known: {', '.join(t.key for t in terms)}")
        picked.append(term)
    return list(dict.fromkeys(picked))


def make_validation_records(vocab: Vocabulary, subjects: Sequence[str], seeds: Sequence[int],
                            shots: Sequence[str] | None = None, angles: Sequence[str] | None = None,
                            locations: Sequence[str] | None = None, negative_prompt: str = "") -> list[dict]:
    """One record per shot size x angle x location x subject x seed, shot sizes outermost.

    The prompt has the training captions' shape: ``<fs_trg>, full shot, eye level, outdoor, <subject>``.
    """
    if not subjects:
        raise UserError("give at least one subject")
    if not seeds:
        raise UserError("give at least one seed")
    records = []
    for shot in _pick("shot_size", shots, vocab):
        for angle in _pick("angle", angles, vocab):
            for location in _pick("location", locations, vocab):
                for s, subject in enumerate(subjects):
                    for seed in seeds:
                        record = {
                            "id": f"{shot.key}-{angle.key}-{location.key}-p{s}-s{seed}",
                            "prompt": ", ".join([shot.token, shot.name, angle.name, location.name, subject]),
                            "shot_size": shot.key, "angle": angle.key, "location": location.key,
                            "subject": subject, "seed": int(seed),
                        }
                        if negative_prompt:
                            record["negative_prompt"] = negative_prompt
                        records.append(record)
    return records


def read_validation_prompts(path: str | Path, vocab: Vocabulary) -> list[dict]:
    """Read ``validation.jsonl``; fills ``id`` and ``shot_size`` where a hand-written line lacks them.
    A malformed line, a line without a prompt or a repeated id is an error (it is a config file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"validation prompts not found: {path} (write them with validation/make_validation_jsonl.py)")
    records: list[dict] = []
    seen: dict[str, int] = {}
    for item in read_jsonl(path):
        if item.error:
            raise UserError(f"{path} line {item.line}: {item.error.detail}")
        record = dict(item.record)
        if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise UserError(f"{path} line {item.line}: needs a text field 'prompt'")
        seed = record.setdefault("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"{path} line {item.line}: 'seed' must be a whole number")
        if not record.get("id"):
            digest = hashlib.sha1(f"{record['prompt']}|{seed}".encode()).hexdigest()[:8]
            record["id"] = f"line{item.line:05d}-{digest}"
        record["id"] = re.sub(r"[^\w.\-]+", "_", str(record["id"])).strip("._") or f"line{item.line:05d}"
        if record["id"] in seen:
            raise UserError(f"{path} line {item.line}: id {record['id']!r} repeats line {seen[record['id']]}")
        seen[record["id"]] = item.line
        if not record.get("shot_size"):
            found = vocab.find(record["prompt"], kind="shot_size")
            record["shot_size"] = found[0].term.key if found else None
        record["line"] = item.line
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no prompts")
    return records
