"""The proof that a trigger works (issue 12, ``make proof``): a world small enough to train on a CPU, in
which learning can be seen, and the project's own front doors run through it.

No real Stable Diffusion weights can be downloaded here, so the proof builds its own: ground-truth
renders from the sample generator's scene renderer (shot size known, captions that never name it), a
VAE and a text-conditioned UNet pre-trained on them (saved as an ordinary SD1.5-layout diffusers
folder), and a learned shot judge for the generated images (``storyboard.inference.learned_judge``).

``config``          the world's configuration, its fingerprint (the cache key), the phase clock
``renders``         ground-truth renders and their captions; empty scenes (no figure) for the judge
``vae``             diffusers ``AutoencoderKL`` at toy width: training, scaling factor, reconstructions
``base``            the UNet + frozen random CLIP text encoder + real CLIP tokenizer: pre-training, SD folder
``judge_training``  fitting the learned judge (+ "nobody" class, colour-only control), its file
``stages``          ``Dataset_fin`` through the data stages: the renders as a Korean-tagged crawl, then
                    collect -> 01 -> 02 -> 03 -> clustering
``trainset``        ``Dataset_fin`` drawn straight from the world (``--data-path direct``)
``build``           the cached, resumable world
``run``             the proof run through the front doors
``page``            ``proof_run/index.html`` and ``proof.json``

``python -m storyboard.devkit.proof --world-cache DIR`` (what ``make proof`` runs); docs/proof.md.
"""
