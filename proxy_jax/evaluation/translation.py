"""The oracle-translation probe's maths: does the model write f(x) after ``<raw>x</raw><comp>``?

For each snippet x the model reads ``1 12 x 13 14`` and writes ids until ``</comp>`` (15) or EOS (the
prompt, the ids it may write and the stop ids are ``proxy_jax.text_format``'s); the written ids y are
compared with the proxy's own view f(x) (``proxy.encode(x)``, ids in the shared vocabulary: symbols
s + 320 and, for the neural proxy, raw passthrough bytes 64..319):

- ``exact_match``: the fraction of snippets with y == f(x);
- ``edit_distance``: the mean over snippets of Levenshtein(y, f(x)) / max(|y|, |f(x)|) (insertions,
  deletions and substitutions of single ids cost 1; 0 when both are empty), so it lies in [0, 1].

Pure functions of id sequences and of a ``translate(prompts) -> outputs`` callable; the probe that
restores a run and generates lives in ``proxy_jax.evaluation.sampler``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from proxy_jax import text_format

def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two id sequences (one DP row at a time, vectorised over ``b``)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if a.size == 0 or b.size == 0:
        return int(max(a.size, b.size))
    j = np.arange(b.size + 1)
    row = j.copy()
    for i, x in enumerate(a, start=1):
        diag = row[:-1] + (b != x)  # substitute (or keep)
        new = np.empty_like(row)
        new[0] = i
        new[1:] = np.minimum(row[1:] + 1, diag)  # delete x, or substitute
        # Insertions chain left to right: new[j] = min_k new[k] + (j - k), a running minimum.
        row = np.minimum.accumulate(new - j) + j
    return int(row[-1])


def normalised_edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else edit_distance(a, b) / longest


def translation_metrics(outputs: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> dict[str, float]:
    """Exact-match rate and mean normalised edit distance of ``outputs`` against ``references``."""
    if len(outputs) != len(references) or not references:
        raise ValueError(f"got {len(outputs)} outputs for {len(references)} references; give one per snippet.")
    exact = [list(map(int, y)) == list(map(int, r)) for y, r in zip(outputs, references)]
    dist = [normalised_edit_distance(y, r) for y, r in zip(outputs, references)]
    return {"exact_match": float(np.mean(exact)), "edit_distance": float(np.mean(dist)),
            "snippets": len(references), "mean_reference_len": float(np.mean([len(r) for r in references]))}


def probe(translate: Callable[[list[np.ndarray]], list[np.ndarray]], encode: Callable[[bytes], np.ndarray],
          snippets: Sequence[bytes]) -> dict[str, float]:
    """The probe over ``snippets``: ``translate`` maps prompts (``text_format.translation_prompt_ids``) to
    written ids (stop id excluded); ``encode`` is the proxy's f."""
    outputs = translate([text_format.translation_prompt_ids(x) for x in snippets])
    return translation_metrics(outputs, [encode(x) for x in snippets])
