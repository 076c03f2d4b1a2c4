"""The clustering stage: finalized records -> CLIP embeddings -> shot clusters -> the balanced
``Dataset_fin/metadata.jsonl`` that training reads as it is.

Input and output (``plan_inputs``). The stage rewrites ``Dataset_fin/metadata.jsonl`` in place, so it
never reads the file it writes: the finalize stage's file is first copied to
``Dataset_fin/metadata_prebalance.jsonl`` and that copy is the input. A re-run recognises its own output
(its records carry ``shot_size_source``) and reads the pre-balance copy again, so running twice gives
the same file; when ``03_finalize_dataset.py`` has written a new ``metadata.jsonl`` since, that one is
copied over the old pre-balance file first. ``--input`` reads another file and leaves the copy alone.
An empty or unusable input stops the stage before anything is written.

Each record of the output keeps every field it came with and gains:

* ``shot_size`` (the final key), ``shot_size_tag`` (what the tags said, or null),
  ``shot_size_source``: ``tag`` (its own tag label) or, for a record without one, the path that named its
  cluster: ``manual`` / ``labels`` / ``zero-shot`` / ``estimator``; ``shot_size_inferred`` (not from its tag);
* ``cluster``, ``cluster_distance`` (to the centre, in the clustered space), ``cluster_label``,
  ``cluster_label_source``, ``cluster_purity``, ``clustering_id``;
* ``shot_size_estimate`` and ``shot_size_estimate_score`` (the OpenCV estimator, when it ran);
* ``text`` starting with the trigger token (``<fs_trg>, full shot, ...``), the old text kept as
  ``text_before_trigger``, ``trigger_token``; ``image_sha256``; ``balance_copy`` (0, or n for the n-th
  repeat a balanced set added).

Rejects (``Dataset_fin/clustering.rejects.jsonl``): bad lines, missing or unreadable images,
``duplicate`` (with ``duplicate_of``: the id it repeats, and the similarity), ``no_shot_size``,
``balanced_out``. The gallery, ``clustering_report.json`` and ``cluster_labels.template.json`` go to the
gallery folder.

The stage's modules: ``settings`` (flags' values and checks), ``inputs`` (which file to read), ``run`` (a
share's embedding, or the full run: ``rows``, ``embed`` + ``cache``, ``naming``, ``balancing``,
``report``). This module is light: it checks the settings and plans the inputs, and only then loads the
model libraries.

``--ray-address`` encodes the images on a Ray cluster (``storyboard.engine``); the cluster is joined
(and checked: an address where nothing answers, or GPUs asked of a cluster without them, is one line)
before anything is written. It replaces ``--shard`` and ``accelerate launch``, which it cannot combine with.
"""
from __future__ import annotations

from storyboard.clustering.inputs import plan_inputs
from storyboard.clustering.settings import ClusteringSettings, check_settings
from storyboard.core.cli import UserError
from storyboard.core.runtime import current_processes, parse_shard
from storyboard.core.vocabulary import load_vocabulary
from storyboard.engine.run import Engine


def run_clip_clustering(s: ClusteringSettings):
    """The stage's one entry point: a shard's embedding (``--shard`` / ``accelerate launch``) or the
    full run. Returns ``ShareResult`` or ``ClusteringResult`` (both have ``summary_text()``)."""
    check_settings(s)
    procs = current_processes(s.device)
    shard = parse_shard(s.shard)
    sharing = shard[1] > 1 or procs.count > 1
    # Under accelerate launch the main process loads the vocabulary after the wait the others block in,
    # so a bad --vocabulary file cannot leave them waiting for it.
    vocab = None if sharing else load_vocabulary(s.vocabulary)
    if sharing and s.engine.on_ray:
        raise UserError("--ray-address spreads the embedding over a Ray cluster itself: leave out --shard and "
                        "accelerate launch")
    inputs = plan_inputs(s)
    from storyboard.clustering.run import cluster_all, embed_share  # noqa: PLC0415 (heavy: loads torch/open_clip/sklearn only after the settings and inputs are checked)

    if sharing:
        share = embed_share(s, inputs, shard, procs)
        procs.wait()
        if shard[1] > 1 or not procs.is_main:
            return share
        vocab = load_vocabulary(s.vocabulary)
    with Engine(s.engine, needs_gpu=True) as engine:  # joined (or refused) before anything is written
        return cluster_all(s, inputs, vocab, engine)
