"""The trained folder: what ``train_trigger02.py`` writes and every other tool reads, owned in one place.

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

The modules, lowest first (this package sits just above ``core``; it never imports a stage):

* ``base_file``   one original-layout checkpoint file: its tensor names read (safetensors header, or
                  ``torch.load(..., weights_only=True)`` for a ``.ckpt``), its family and prediction
                  type detected;
* ``base_model``  the base, a diffusers folder or one checkpoint file, checked and described
                  (``resolve_base``), with its configuration (``base_configs/``: SD 1.x, SD 2.x epsilon
                  and v-prediction, SDXL) and fingerprint;
* ``base_load``   a resolved base into a diffusers pipeline, offline (``from_pretrained`` /
                  ``from_single_file`` with a local ``config``);
* ``layout``  the file names above and the LoRA's target layers;
* ``read``    a folder read and checked without loading a model (``read_checkpoint``);
* ``checks``  whether a folder's tokens fit a base (tokenizer size, existing tokens, embedding width);
* ``load``    a base + a folder into a diffusers pipeline with the plain calls a user makes;
* ``write``   the trainer's writers and the reload check (every file back through plain diffusers).
"""
