"""Code-generation evaluation: run model completions against HumanEval(+) / MBPP(+) tests and score pass@k.

Modules (import them directly; this package imports none of them so that importing it is free):
- ``sandbox``: run one untrusted program per isolated process, many in parallel; ``bootstrap`` is the
  code its interpreter runs, ``mountns`` the private mount namespace it sets up first.
- ``passk``: the unbiased pass@k estimator.
- ``problems``: the ``Problem`` record, dataset loaders, test-program builders, stop strings.
- ``perturb``: deterministic ReCode-style prompt perturbations.
- ``harness``: score completions (resumable JSONL results) and canonical-solution completions.

These modules are leaves: they import nothing from ``proxy_jax`` outside this package.
"""
