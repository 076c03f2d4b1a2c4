"""CLIP shot clustering and the balanced training set: the stage's entry point (``stage``: settings checked,
input planned, then the model libraries loaded) and its runs (``run``), in phases (``rows``, ``embed`` with
``clip``, ``decode`` and ``cache``, ``naming`` with ``measure``, ``balancing``, ``report`` with ``gallery``);
k-means, naming and balancing as plain functions (``cluster``); the shot judges shared with validation
(``shots``).
"""
