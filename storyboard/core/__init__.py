"""What every stage keeps: one-line errors, progress bars and tables (``cli``), JSONL records with
accounting and atomic writes (``records``), the shot vocabulary (``vocabulary`` + ``data/vocabulary.json``),
text normalisation (``textnorm``), robust image opening (``imageio``), HTML pages (``html``), square
geometry shared by the image and clustering stages (``geometry``) and devices, dtypes, hashes, shards and
quiet logging (``runtime``). Imports nothing else of ours.
"""
