"""What exists for the demo and the tests, never imported by product code: tiny random-weight
models (``tiny``, ``tiny_marian``, ``tiny_lineart``), the procedural sample data (``sample_data``), real-face
shot composites, and the demo (``python -m storyboard.devkit.demo``).
"""
