"""Storyboard Trigger: the shared package behind every front-door script.

Each module holds one idea (see README.md, "Code layout"); the scripts under the seed's folder
names only parse flags and call into here.
"""
__version__ = "0.1.0"
