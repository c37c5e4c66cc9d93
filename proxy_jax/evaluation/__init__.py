"""Evaluation: raw-byte bits per byte (``bpb``) and scoring a finished run's workdir (``score``).

Leaves first: ``bpb`` is maths over an ``eval_step`` callable and imports nothing of the training loop.
"""
