"""Evaluation: raw-byte bits per byte (``bpb``), scoring a finished run's workdir (``score``), code generation
and the probes (``codegen`` over ``sampler``; ``translation``: the oracle-translation maths).

Leaves first: ``bpb`` is maths over an ``eval_step`` callable and imports nothing of the training loop.
"""
