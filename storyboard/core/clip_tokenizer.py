"""Stable Diffusion's CLIP tokenizer, built offline from the BPE merges open_clip ships.

SD 1.x, SD 2.x and SDXL use OpenAI's CLIP BPE (49,408 ids). No hub can be reached here, so a tokenizer folder is
written from open_clip's ``bpe_simple_vocab_16e6.txt.gz``: the 256 byte symbols, the same with ``</w>``,
the first 48,894 merges joined, then ``<|startoftext|>`` and ``<|endoftext|>``; ``merges.txt`` starts
with ``#version: 0.2``. Its ids equal ``open_clip.tokenize`` token for token. The files are the four
SD1.5 ships (vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json), so loading goes
through the same path as a downloaded model's tokenizer.

The tokenizers of the OpenCLIP text encoders (SD 2.x's ``tokenizer/``, SDXL's ``tokenizer_2/``) are the
same BPE but pad with ``!`` (id 0, as open_clip pads with zeros) instead of ``<|endoftext|>``:
``build_clip_tokenizer(folder, pad_token=OPEN_CLIP_PAD)``.
"""
from __future__ import annotations

import gzip
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

from storyboard.core.cli import UserError
from storyboard.core.records import atomic_write, atomic_write_json

# CLIP's special tokens, by the names Stable Diffusion's tokenizer files use (open_clip spells them
# <start_of_text>/<end_of_text>; the ids, 49406/49407, are the same).
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
OPEN_CLIP_PAD = "!"  # SD 2.x's and SDXL's second tokenizer pad with this (id 0)


def clip_bpe_vocab_path() -> Path:
    """open_clip's shipped ``bpe_simple_vocab_16e6.txt.gz``: the merges CLIP's tokenizer is built from."""
    path = Path(default_bpe())
    if not path.is_file():
        raise UserError(f"open_clip's BPE vocabulary is missing: {path} (reinstall open_clip_torch)")
    return path


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def build_clip_tokenizer(out_dir: str | Path, pad_token: str = EOS):
    """Write SD1.5's tokenizer files (the real CLIP BPE) into ``out_dir`` and load them back;
    ``pad_token=OPEN_CLIP_PAD`` gives SD 2.x's (and SDXL's ``tokenizer_2``).

    The vocabulary is laid out the way open_clip's ``SimpleTokenizer`` builds it, so ids match
    ``open_clip.tokenize`` token for token.
    """
    out_dir = Path(out_dir)
    with gzip.open(clip_bpe_vocab_path()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    # Line 0 is a header; CLIP uses exactly enough merges to reach 49,152 + 2 special tokens.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab += ["".join(merge.split()) for merge in merges] + [BOS, EOS]
    if len(vocab) != CLIP_VOCAB_SIZE or len(set(vocab)) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary came out with {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")

    atomic_write_json(out_dir / "vocab.json", {token: i for i, token in enumerate(vocab)})
    with atomic_write(out_dir / "merges.txt") as fh:
        fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    atomic_write_json(out_dir / "special_tokens_map.json", {
        "bos_token": _added_token(BOS), "eos_token": _added_token(EOS),
        "pad_token": pad_token, "unk_token": _added_token(EOS),
    })
    atomic_write_json(out_dir / "tokenizer_config.json", {
        "add_prefix_space": False,
        "bos_token": {"__type": "AddedToken", **_added_token(BOS)},
        "do_lower_case": True,
        "eos_token": {"__type": "AddedToken", **_added_token(EOS)},
        "errors": "replace",
        "model_max_length": CLIP_CONTEXT_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": {"__type": "AddedToken", **_added_token(EOS)},
    })
    return CLIPTokenizer.from_pretrained(out_dir, model_max_length=CLIP_CONTEXT_LENGTH)
