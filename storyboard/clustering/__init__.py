"""CLIP shot clustering and the balanced training set: open_clip loading and cached embeddings
(``embed``), k-means + naming + balancing (``cluster``), the shot judges (``shots``), the gallery and the
stage itself (``stage``).
"""
