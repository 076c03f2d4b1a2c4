"""Making images from a base model + a training output: trigger insertion, PNG metadata, the
``inference_trigger.py`` run, sharded validation (``validate``) and the fidelity report (``report``).
"""
