"""Trigger-token + LoRA training (``train_trigger02.py``), one idea per module.

Checked before any model loads (light: no torch at import):

* ``args``               the flags (``add_*_arguments`` groups) and the checks on them;
* ``inputs``             the checks that read the base folder and the data set;
* ``token_specs``        which tokens to train and the words each row starts from;
* ``checkpoint_folders`` where checkpoints live, which one a resume continues, whether it may.

The training itself (heavy: torch, diffusers, peft, accelerate):

* ``loop``        ``train(args)``: load -> prepare with accelerate -> train -> save (reads like a
                  diffusers example); ``context`` the state a run carries;
* ``models``      the base's parts loaded and adapted (token rows, LoRA, dtypes), the optimizer;
* ``tokens``      the token rows: added to the tokenizer, initialised, trained apart from the base rows;
* ``data``        ``Dataset_fin`` loading, transforms, caption tags, the step-indexed sampler, latents;
* ``step``        one micro-batch's loss, and the fixed-noise loss;
* ``checkpoints`` save / rotate / resume (exact: the same weights as an uninterrupted run);
* ``save``        the final export, manifest, reload check and summary;
* ``preview``     validation images from the files just saved, loaded the way a user loads them.

The trained folder's format (diffusers LoRA, WebUI LoRA, embeddings, manifest) belongs to
``storyboard.artifacts``.
"""
from __future__ import annotations

import os

from storyboard.core.cli import UserError
from storyboard.train.inputs import check_inputs


def run(args) -> int:
    """Check every input (no model loaded: a bad one costs about a second), then train; the exit
    code for the front door. Under several processes only the main one prints a bad input."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    try:
        checked = check_inputs(args)
    except UserError:
        if rank != 0:
            raise SystemExit(2) from None
        raise
    from storyboard.train.loop import run as train_and_report  # noqa: PLC0415 (heavy: torch, diffusers and peft load only once every input is checked)

    return train_and_report(args, checked)
