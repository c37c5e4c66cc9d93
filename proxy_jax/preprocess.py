"""Compress a corpus once into ArrayRecord shards: ``python -m proxy_jax.preprocess``.

    python -m proxy_jax.preprocess --config=configs/xyz.py --output=/data/stdlib-tok4k \
        [--workdir=DIR] [--num_shards=8] [--process_index=0 --process_count=1] [--splits=train,validation]
        [--overwrite]

Calls ``proxy_jax.assemble.preprocess``, which writes ``{output}/{split}-{shard:05d}-of-{N:05d}.array_record``
(one ``records.Record`` per document, in split order: shard s holds documents [s*n/N, (s+1)*n/N)) and
``{output}/manifest.json``. Process i
of P writes the shards s with s % P == i; whoever completes the last shard writes the manifest. Each
shard is written under a temporary name, renamed when complete, then its statistics are saved under
``{output}/shard_stats/``; a rerun skips shards whose statistics match, so an interrupted run resumes.
An output folder made with other proxy or corpus settings is refused (one sentence) unless ``--overwrite``,
which removes its shards, statistics, manifest and tokenizer.model first.
Train with ``--config.data.source=preprocessed --config.data.path={output}``.
"""

from __future__ import annotations

import os


def main(argv):
    del argv
    from absl import flags
    f = flags.FLAGS
    if f.config is None:
        raise SystemExit("--config is required: an experiment config file, e.g. --config=configs/proxy_tokens.py.")
    if not f.output:
        raise SystemExit("--output is required: the folder that receives the shards and manifest.json.")
    from proxy_jax import assemble
    from proxy_jax.data import shards

    m = assemble.preprocess(f.config, f.output, workdir=f.workdir or None, num_shards=f.num_shards,
                            process_index=f.process_index, process_count=f.process_count,
                            splits=[s for s in f.splits.split(",") if s], overwrite=f.overwrite)
    if not m["complete"]:
        print(f"process {f.process_index} of {f.process_count} done; the manifest is written when every "
              "shard is finished.")
        return
    for split, info in m["splits"].items():
        print(f"{split}: {info['documents']} documents, {info['bytes']} bytes, {info['symbols']} symbols, "
              f"{info['ratio']:.3f} bytes/symbol")
    print(f"wrote {os.path.join(f.output, shards.MANIFEST)}")


def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("output", None, "Folder for the shards and manifest.json.")
    flags.DEFINE_string("workdir", None, "Where a trained tokenizer is cached (default: {output}/work).")
    flags.DEFINE_integer("num_shards", 8, "Shards per split.")
    flags.DEFINE_integer("process_index", 0, "This process (writes the shards s with s % process_count == index).")
    flags.DEFINE_integer("process_count", 1, "Number of processes sharing the work.")
    flags.DEFINE_string("splits", "train,validation", "Comma-separated splits to write.")
    flags.DEFINE_bool("overwrite", False, "Replace an --output made with other proxy or corpus settings (refused "
                      "without it); output made with the same settings is resumed either way.")


if __name__ == "__main__":
    from absl import app

    from proxy_jax import cli

    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
