"""The image stages: bubble masks + inpainting (``bubbles``), 1024-px squares (``squares``), the
finalize stage 03 (``finalize``), line art (``lineart`` settings and OpenCV backends, ``lineart_models``
for the model backends, ``lineart_stage``) and the contact sheet.
"""
