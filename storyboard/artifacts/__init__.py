"""The trained-folder format, owned in one place: what the trainer writes (LoRA in diffusers and
kohya keys, embeddings, manifest), how it is read and checked, and how it is loaded into a pipeline.
"""
