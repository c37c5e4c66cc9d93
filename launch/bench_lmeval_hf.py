"""Bits per byte of the same documents three ways: the library (``evaluate``), lm-eval's native backend
(``--model proxy_jax``) and lm-eval's Hugging Face backend on the export (``--model hf``, with
``add_bos_token=False`` and with default arguments), for a tiny byte run and a tiny proxy_tokens run.

    python launch/bench_lmeval_hf.py        # from the repository root; needs .[lmeval,export]

The runs, documents and helpers are those of tests/test_lm_eval.py (which asserts the agreement): this
prints the numbers the tests compare, plus p(<raw> | <bos>) of the proxy run's export. Offline.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    import pathlib

    import torch
    from absl import flags

    import helpers
    import test_lm_eval as t
    from proxy_jax import huggingface, recipes, text_format, train, vocab

    flags.FLAGS.mark_as_parsed()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_lmeval_hf_"))
    corpus = tmp / "corpus"
    corpus.mkdir()
    for path in helpers.stdlib_paths(40):
        (corpus / path.name).write_bytes(path.read_bytes()[:3000])
    print("run            library    native     hf (add_bos_token=False)  hf (default)")
    for name, spec, fmt, extra in (("bytes", "configs/bytes.py:tiny", text_format.PLAIN, {}),
                                   ("proxy_tokens", "configs/proxy_tokens.py:tiny", text_format.SENTINEL, t.TOKENIZER)):
        workdir = str(tmp / name)
        config = recipes.load_config(os.path.join(ROOT, spec), **{**t.TRAIN, "data.path": str(corpus), **extra})
        train.train(config, workdir, progress=False)
        out = tmp / f"{name}_hf"
        huggingface.export_workdir(workdir, str(out))
        lm, default = t.hf_lm(out, ",add_bos_token=False"), t.hf_lm(out)
        texts = t.hf_documents(lm.max_length, fmt)
        (tmp / name / "tasks").mkdir()
        _, (library, native, hf) = t.three_bits_per_byte(workdir, lm, texts, lm.max_length, tmp / name / "tasks")
        (tmp / name / "tasks_default").mkdir()
        t.perplexity_task(tmp / name / "tasks_default", "local_ppl", texts)
        hf_default = t.lm_eval_run(tmp / name / "tasks_default", ["local_ppl"], model=default)
        hf_default = hf_default["results"]["local_ppl"]["bits_per_byte,none"]
        print(f"{name:14s} {library:.7f}  {native:.7f}  {hf:.7f} ({hf - library:+.2e})  "
              f"{hf_default:.4f} ({hf_default - library:+.3f})")
        if fmt is text_format.SENTINEL:
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(torch.tensor([[vocab.BOS]])).logits[0, -1].double(), -1)
            p_raw = math.exp(float(logp[vocab.RAW_OPEN]))
            print(f"{name}: p(<raw> | <bos>) = {p_raw:.4f} ({-math.log2(p_raw):.1f} bits per document)")


if __name__ == "__main__":
    main()
