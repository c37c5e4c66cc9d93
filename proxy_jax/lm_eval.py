"""Command line: ``python -m proxy_jax.lm_eval --model proxy_jax --model_args workdir=DIR --tasks ...``.

lm-evaluation-harness's own command line (every flag of ``lm_eval``) with the ``proxy_jax`` model
registered first (``proxy_jax.evaluation.lm_eval_backend``): lm-eval 0.4.13 finds models only among
those imported, so the plain ``lm_eval`` command does not know it. Needs ``pip install '.[lmeval]'``;
without it the command ends with one ``error:`` sentence and exit status 2, as do a bad model argument, a
missing workdir or unreadable checkpoints.
"""

from __future__ import annotations

import sys


def main(argv=None) -> None:
    try:
        from lm_eval.__main__ import cli_evaluate

        from proxy_jax import checkpoint
        from proxy_jax.evaluation import lm_eval_backend  # noqa: F401 - registers the "proxy_jax" model
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "lm_eval":
            print("error: lm-evaluation-harness is not installed; run pip install 'proxy_jax[lmeval]' "
                  "(or pip install 'lm-eval==0.4.13').", file=sys.stderr)
            sys.exit(2)
        raise
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except (ValueError, OSError, checkpoint.UnreadableCheckpointsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
