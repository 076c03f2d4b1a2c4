"""The metadata stages: collect + title matching (``collect``, ``titles``), Korean tag cleaning
(``tags``, stage 01) and translation (``translate``, stage 02; its MarianMT backend in ``marian``), with
what they share: raw crawl fields (``raw_fields``) and memoised vocabulary lookups (``memo``). JSONL in,
JSONL out.
"""
