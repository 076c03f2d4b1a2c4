"""The metadata stages: collect + title matching (``collect``, ``titles``), Korean tag cleaning
(``tags``, stage 01) and translation (``translate``, stage 02). JSONL in, JSONL out.
"""
