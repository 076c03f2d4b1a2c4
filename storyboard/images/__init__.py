"""The image stages: bubble masks + inpainting (``bubbles``), 1024-px squares (``squares``), the
finalize stage 03 (``finalize``), line art (``lineart`` backends, ``lineart_stage``) and the contact sheet.
"""
