"""Trigger-token + LoRA training (``train_trigger02.py``), one idea per module:

* ``args``        the flags (``add_*_arguments`` groups) and the checks that need no model loaded;
* ``inputs``      the checks that read the base folder and the data set, before any training;
* ``data``        ``Dataset_fin`` loading, transforms, caption tags, the step-indexed sampler, latents;
* ``loop``        ``train(args)``: load -> prepare with accelerate -> train -> save (reads like a
                  diffusers example);
* ``checkpoints`` save / rotate / resume (exact: the same weights as an uninterrupted run);
* ``preview``     validation images from the files just saved, loaded the way a user loads them.

The exported formats (diffusers LoRA, WebUI LoRA, embeddings, manifest) live in ``storyboard.artifacts.export``
and the token rows in ``storyboard.train.tokens``.
"""
from __future__ import annotations

import os


def run(args) -> int:
    """Check every input (no model loaded: a bad one costs about a second), then train; the exit
    code for the front door. Under several processes only the main one prints a bad input."""
    from storyboard.core.cli import UserError
    from storyboard.train.inputs import check_inputs

    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    try:
        checked = check_inputs(args)
    except UserError:
        if rank != 0:
            raise SystemExit(2)
        raise
    from storyboard.train.loop import run as train_and_report

    return train_and_report(args, checked)
