"""Images from a base model + a trained folder (``inference_trigger.py``), the sharded validation
(``validation/run_validation.py``) and its report (``validation/report.py``), one idea per module:

* ``settings``      the sampling settings every PNG records, the samplers, the shared flags;
* ``prompts``       the trigger rules: what a prompt becomes for a checkpoint, or for the bare base;
* ``prompt_files``  ``--prompts-file`` and ``validation.jsonl`` (made from the vocabulary, read back);
* ``pngmeta``       the A1111 ``parameters`` text and our JSON copy inside each PNG;
* ``pipeline``      ``load_trigger_pipeline``: every check, the user's diffusers calls, the LoRA fused;
* ``jobs``          one image per job, written atomically with its metadata;
* ``run``           what ``inference_trigger.py`` does after parsing its flags;
* ``validate``      the validation run: columns, shards across processes, resuming;
* ``report``        grids, trigger fidelity and CLIP scores; ``judges`` the shot judges (CLIP or OpenCV).

``pipeline`` and ``judges`` import torch (and diffusers, open_clip) at their top; every other module
here is light, so the front doors answer ``--help`` and refuse bad flags, prompts and folders before
those load. ``run``, ``validate`` and ``report`` each cross over once, after their checks.

The trained folder itself (its files, reading, checks, loading) belongs to ``storyboard.artifacts``.
"""
