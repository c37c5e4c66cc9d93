"""Compress a corpus once into ArrayRecord shards: ``python -m proxy_jax.preprocess``.

    python -m proxy_jax.preprocess --config=configs/xyz.py --output=/data/stdlib-tok4k \
        [--cache_dir=DIR] [--num_shards=8] [--processes=1] [--process_index=0 --process_count=1] [--splits=train,validation]
        [--overwrite]

Calls ``proxy_jax.assemble.preprocess``, which writes ``{output}/{split}-{shard:05d}-of-{N:05d}.array_record``
(one ``records.Record`` per document, in split order: shard s holds documents [s*n/N, (s+1)*n/N)) and
``{output}/manifest.json``. Process i
of P writes the shards s with s % P == i; whoever completes the last shard writes the manifest. Each
shard is written under a temporary name, renamed when complete, then its statistics are saved under
``{output}/shard_stats/``; a rerun skips shards whose statistics match, so an interrupted run resumes.
An output folder made with other proxy or corpus settings is refused (one sentence) unless ``--overwrite``,
which removes its shards, statistics, manifest, tokenizer.model and default tokenizer cache first. A
tokenizer the proxy trains is cached in ``--cache_dir`` (default ``{output}/work``) and reused by a rerun;
``--workdir`` is the deprecated name of ``--cache_dir`` (it is not a training run's workdir).
``--processes=N`` starts N local processes that share the shards the same way (one per core: the
neural proxy's M1 keeps a core busy) and prints the wall time and each process's peak memory; the shards
are byte for byte those of one process. Train with ``--config.data.source=preprocessed
--config.data.path={output}``.

The flags and the config are checked before any work; a bad value, a malformed JSONL line, an empty
training split or a missing file ends with one ``error:`` sentence and exit status 2, Ctrl-C with exit
status 130 (``proxy_jax.cli``).
"""

from __future__ import annotations

import sys

USAGE = ("usage: python -m proxy_jax.preprocess --config=configs/FILE.py[:PRESET] --output=DIR [--cache_dir=DIR] "
         "[--num_shards=N] [--processes=N] [--process_index=I --process_count=P] [--splits=train,validation] "
         "[--config.KEY=VALUE ...]")


def check_flags(num_shards: int, process_index: int, process_count: int, splits: list[str]) -> None:
    """The command's own flags, checked where they enter (before a tokenizer is trained); one sentence each."""
    from proxy_jax.data import corpus

    if num_shards < 1:
        raise ValueError(f"--num_shards={num_shards} must be >= 1.")
    if process_count < 1:
        raise ValueError(f"--process_count={process_count} must be >= 1.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"--process_index={process_index} must be in [0, {process_count}) for "
                         f"--process_count={process_count}.")
    bad = [s for s in splits if s not in corpus.SPLITS]
    if bad or not splits:
        raise ValueError(f"--splits={','.join(splits)!r} must name some of {', '.join(corpus.SPLITS)}.")


def cache_dir_flag(cache_dir: str | None, workdir: str | None) -> str | None:
    """``--cache_dir``, or its deprecated name ``--workdir`` (with one warning line); both differing is refused."""
    if workdir:
        if cache_dir and cache_dir != workdir:
            raise ValueError(f"--workdir={workdir} is the deprecated name of --cache_dir={cache_dir}; pass only "
                             "--cache_dir.")
        print("warning: preprocess --workdir is deprecated: it names the tokenizer cache; use --cache_dir.",
              file=sys.stderr, flush=True)
    return cache_dir or workdir or None


def main(argv):
    from absl import flags

    from proxy_jax import cli

    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r}; flags are written --name=value.")
    f = flags.FLAGS
    config = cli.loaded_config()
    if config is None:
        raise cli.UsageError("--config is required: an experiment config file, e.g. --config=configs/proxy_tokens.py.")
    if not f.output:
        raise cli.UsageError("--output is required: the folder that receives the shards and manifest.json.")
    splits = [s for s in f.splits.split(",") if s]
    check_flags(f.num_shards, f.process_index, f.process_count, splits)
    if f.processes < 1:
        raise ValueError(f"--processes={f.processes} must be >= 1 (local processes sharing the shards).")
    cache_dir = cache_dir_flag(f.cache_dir, f.workdir)
    cli.quiet_libraries()
    from proxy_jax import config as config_lib
    from proxy_jax import proxies
    from proxy_jax.data import corpus

    config_lib.validate(config)  # what preprocessing reads of the config, before any tokenizer is trained
    proxies.check_name(config.proxy.name)
    corpus.check_source(config.data)
    from proxy_jax import assemble, storage
    from proxy_jax.data import shards

    output = storage.resolve(f.output)  # absolute (``~`` expanded); a gs:// URL is written through a local stage
    if f.processes > 1:
        m = _pool(config, output, storage.resolve(cache_dir) or None, splits)
    else:
        m = assemble.preprocess(config, output, cache_dir=storage.resolve(cache_dir) or None,
                                num_shards=f.num_shards, process_index=f.process_index,
                                process_count=f.process_count, splits=splits, overwrite=f.overwrite)
    if not m["complete"]:
        print(f"process {f.process_index} of {f.process_count} done; the manifest is written when every "
              "shard is finished.")
        return
    for split, info in m["splits"].items():
        print(f"{split}: {info['documents']} documents, {info['bytes']} bytes, {info['symbols']} symbols, "
              f"{info['ratio']:.3f} bytes/symbol")
    print(f"wrote {storage.join(output, shards.MANIFEST)}")


def _pool(config, output: str, cache_dir: str | None, splits: list[str]) -> dict:
    """``--processes=N``: N local processes share the shards (``proxy_jax.preprocess_pool``)."""
    from absl import flags

    from proxy_jax import assemble, preprocess_pool, storage

    f = flags.FLAGS
    if f.process_count > 1 or f.process_index:
        raise ValueError(f"--processes={f.processes} starts its own processes; drop --process_index and "
                         "--process_count (they split the work between hosts).")
    if storage.is_remote(output):
        raise ValueError(f"--output={output} is a URL; --processes writes a local folder: preprocess into one and "
                         "copy it to the bucket (or use --processes=1).")
    assemble.validate(config)
    result = preprocess_pool.preprocess(config, output, processes=f.processes, cache_dir=cache_dir,
                                        num_shards=f.num_shards, splits=splits, overwrite=f.overwrite)
    print(f"{f.processes} processes: {result.seconds:.0f} s, peak memory "
          f"{', '.join(f'{m:.0f}' for m in result.peak_rss_mb)} MB")
    return result.manifest


def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("output", None, "Folder for the shards and manifest.json.")
    flags.DEFINE_string("cache_dir", None, "Where a trained tokenizer is cached and reused (default: {output}/work).")
    flags.DEFINE_string("workdir", None, "Deprecated name of --cache_dir (a tokenizer cache, not a training run).")
    flags.DEFINE_integer("num_shards", 8, "Shards per split.")
    flags.DEFINE_integer("process_index", 0, "This process (writes the shards s with s % process_count == index).")
    flags.DEFINE_integer("process_count", 1, "Number of processes sharing the work.")
    flags.DEFINE_integer("processes", 1, "Local processes started by this command to share the shards (e.g. one "
                         "per core); each writes the shards s with s % processes == its index.")
    flags.DEFINE_string("splits", "train,validation", "Comma-separated splits to write.")
    flags.DEFINE_bool("overwrite", False, "Replace an --output made with other proxy or corpus settings (refused "
                      "without it); output made with the same settings is resumed either way.")


def run() -> None:
    """The command: user errors are one ``error:`` sentence (exit 2), Ctrl-C exits 130 (``proxy_jax.cli``)."""
    from proxy_jax import cli

    cli.install_interrupt_handling()  # before the imports below
    from absl import app, flags

    _define_flags()
    cli.run_command(lambda: app.run(main, flags_parser=cli.parse_flags), usage=USAGE,
                    on_interrupt=lambda: ("finished shards are kept; the same command skips them and writes the "
                                          "rest."),
                    where=lambda: flags.FLAGS["output"].value)


if __name__ == "__main__":
    run()
