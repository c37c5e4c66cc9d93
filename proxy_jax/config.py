"""The configuration schema: every switch of a run, with its default and what it means.

Experiment files in ``configs/`` start from :func:`base_config` and override what they need; every
value can be overridden again from the command line (``--config.data.seq_len=1024``).
``validate`` checks a finished config before anything is compiled and raises one clear sentence.

The schema is closed: :func:`base_config` returns a locked :class:`Config`, so a misspelt key is refused
wherever it is set (``config.train.stepz = 5`` in Python, ``override``, a sweep file, the command line) with
one sentence and the nearest real key. ``config.unlocked()`` opens it for code that really adds keys.
"""

from __future__ import annotations

import difflib

import ml_collections


def unknown_key(key: str, choices, where: str = "") -> str:
    """One sentence for a config key that does not exist (``where``: its section), with the closest one."""
    full = f"{where}.{key}" if where else key
    prefix, _, leaf = full.rpartition(".")
    near = difflib.get_close_matches(leaf, [str(c) for c in choices], n=1, cutoff=0.6)
    hint = (f"did you mean {'.'.join(filter(None, [prefix, near[0]]))!r}?" if near
            else "see proxy_jax/config.py for the keys.")
    return f"Config key {full!r} does not exist; {hint}"


class Config(ml_collections.ConfigDict):
    """A ConfigDict whose locked form refuses a key that does not exist with one sentence and a suggestion
    (ml_collections' own message dumps the whole section)."""

    def __setitem__(self, key, value):
        if self.is_locked and key not in self:
            raise KeyError(unknown_key(str(key), self.keys(), self.__dict__.get("_section", "")))
        super().__setitem__(key, value)

    def __setattr__(self, attribute, value):
        if not attribute.startswith("_") and self.is_locked and attribute not in self:
            raise AttributeError(unknown_key(attribute, self.keys(), self.__dict__.get("_section", "")))
        super().__setattr__(attribute, value)


def _section(name: str) -> Config:
    node = Config()
    object.__setattr__(node, "_section", name)  # for the message: "train.stepz", not "stepz"
    return node


def base_config() -> ml_collections.ConfigDict:
    c = Config()
    c.seed = 0  # one seed for data order, mixing draws and parameter init

    # ---- corpus ---------------------------------------------------------------------------
    c.data = d = _section('data')
    # stdlib | dir | jsonl | parquet | hf_disk | arrayrecord | tfds | preprocessed (proxy_jax.data.corpus)
    d.source = "stdlib"
    # dir, hf_disk (a datasets save_to_disk folder; a DatasetDict trains on "train", holds out "validation"):
    # a folder; jsonl/parquet/arrayrecord/preprocessed: a file, folder or glob; tfds: a name. All but dir and
    # tfds may be a gs:// (fsspec) URL (proxy_jax.data.remote; shards cached under $PROXY_JAX_DATA_CACHE)
    d.path = ""
    d.glob = "**/*.py"  # dir source: which files are documents
    # jsonl, parquet, hf_disk: the field/column holding the document. With the default "text", "content" is
    # tried next; any other name is the only field read, and a file lacking it is refused.
    d.text_field = "text"
    d.skip_malformed = False  # jsonl: skip (and count) malformed lines instead of stopping
    d.tfds_split = "train"  # tfds: split used for training (validation is held out by hash)
    d.tfds_data_dir = ""  # tfds: data_dir ('' = the TFDS default)
    d.val_fraction = 0.05  # fraction of documents held out by path/key hash, whole documents
    d.max_doc_bytes = 0  # documents longer than this are cut into pieces (0 = never)
    # How a jsonl/parquet/hf_disk/arrayrecord corpus is indexed before the first batch. "full" reads every
    # document once: sizes are known, empty and null documents (and malformed JSONL lines) are dropped and
    # counted at load, before training starts. "lazy" reads metadata only (Parquet footers, Arrow and
    # ArrayRecord row counts, JSONL line offsets by a newline scan without parsing): a corpus of thousands
    # of files opens in seconds, and empty, null or malformed documents are skipped (and counted in the log)
    # when the packer meets them, which changes no other document's place. Cutting (max_doc_bytes > 0) needs
    # sizes, so it needs "full". "auto" = "lazy" for a corpus of >= 1,000 files or >= 1 GiB with
    # max_doc_bytes = 0, else "full"; a run fixes the choice in its config.json when it starts (runs made
    # before this switch resume with "full"). Other sources never read documents to index them.
    d.index = "auto"
    d.seq_len = 256  # model context; rows carry seq_len + num_targets tokens
    d.batch_size = 8  # global batch (rows per optimiser step, across all hosts)
    # Each row of a batch is its own stream of documents (proxy_jax.data.packing), so a batch starts in
    # batch_size different documents. Positions: "row" restarts them at every row start and after every
    # EOS, so RoPE never sees a position past seq_len + heads (the reference's rule; at 10^6 and beyond the
    # float32 angles make attention-score errors above bf16 noise, launch/bench_positions.py);
    # "document" counts from each BOS across rows (absolute offsets, e.g. for long-context studies).
    d.positions = "row"
    # Virtual data shards V: shard v packs documents[v::V] into batch_size/V rows, and the global batch is
    # the shards' rows in order whatever the number of processes. A run resumes on any process count that
    # divides V with the same batches. 0 = one per process (set it, e.g. to batch_size, before a run you
    # may resume on another number of hosts). Must divide batch_size.
    d.virtual_shards = 0
    d.shuffle = True
    d.num_workers = 0  # Grain worker processes for the per-document stage (0 = in-process)
    d.prefetch = 2  # batches prefetched by each worker
    # Perf: batches the training loop's input pipeline packs ahead in a background thread while the device
    # runs the current step (mixing + packing leave the loop's critical path; perf/data_wait_frac -> ~0 when
    # host work per batch < step time). Batches, losses and checkpoints are identical for every value and
    # it may change on resume. 0 = pack inside the loop. Costs host memory of this many batches.
    d.host_prefetch = 2
    d.num_epochs = 0  # 0 = repeat forever (each epoch reshuffles)
    # The transfer control of a proxy run: every document draws exactly as in the proxy run with this
    # config (same rate, mode and step), then compressed streams are dropped: comp-only documents vanish,
    # pairs keep their raw half, raw documents stay, so the raw documents arrive in the proxy run's order.
    # The model's vocabulary is bytes only. Isolates what the compressed view adds beyond its raw bytes.
    d.raw_only_of_mix = False
    # A weighted mixture of sources instead of data.source/data.path (proxy_jax.data.mixture; README
    # "Mixtures of sources"): a JSON or YAML file, or inline a list of components {name, source, path, weight,
    # rate_peak, and the source's keys: glob, text_field, ...} or {components: [...], stages: [{start_step,
    # weights: {name: weight}}]}. Weights are normalised; config.json records the resolved mixture. '' = none.
    d.mixture = ml_collections.FieldReference("", field_type=object)

    # ---- proxy (the compressor f) -------------------------------------------------------
    c.proxy = p = _section('proxy')
    p.name = "tokenizer"  # bytes | tokenizer | tokens_as_bytes | gzip | neural (proxy_jax.proxies)
    p.vocab_size = 4096  # tokenizer: BPE vocabulary trained on the training split
    p.model_path = ""  # tokenizer: a user SentencePiece .model instead of training one
    p.train_max_bytes = 50_000_000  # tokenizer: bytes of training split fed to the BPE trainer
    p.gray_code = False  # tokens_as_bytes: Gray-code ids over the byte-sorted vocabulary
    p.gzip_level = 9
    p.m1_workdir = ""  # neural: workdir of a trained M1 (configs/m1.py)
    p.window_bits = 16  # neural: equal-information window size W
    p.entropy_quantile = 0.9  # neural: segment boundary at bytes above this entropy quantile
    p.entropy_threshold = 0.0  # neural: fixed threshold in bits (0 = the quantile over a corpus sample)
    p.entropy_sample_bytes = 262_144  # neural: bytes of the training split sampled for that quantile
    p.chunk_bytes = 2048  # neural: M1 entropy-pass chunk = longest segment (<= M1's context)
    p.min_segment_bytes = 1  # neural: no new segment before the current one has this many bytes
    p.quantize_bits = 16  # neural: P, M1 probabilities become integer frequencies summing to 2**P
    p.m1_batch_rows = 64  # neural: rows of chunk_bytes per M1 call (speed only: a call holds whole tiles)
    p.m1_tile_positions = 2048  # neural: bytes per M1 tile, the fixed shape every M1 call is made of (part of the view)

    # ---- mixing and its schedule ------------------------------------
    c.mix = m = _section('mix')
    m.warmup_steps = 10_000  # W: r ramps r0 -> rp, mode = mode_warmup
    m.steady_steps = 40_000  # T: r = rp, mode = mode_steady
    m.decay_steps = 0  # D: r decays linearly rp -> rf
    m.rate_init = 0.4  # r0
    m.rate_peak = 0.9  # rp
    m.rate_final = 0.9  # rf (and after W+T+D, mode = mode_final)
    m.mode_warmup = "translation_random"  # modes: proxy_jax.data.mixing.MODES
    m.mode_steady = "sentinel"
    m.mode_final = "sentinel"

    # ---- model -----------------------------------------------------------------------------
    c.model = mo = _section('model')
    mo.num_layers = 2
    mo.d_model = 128
    mo.num_heads = 4
    mo.num_kv_heads = 4  # < num_heads for grouped-query attention
    mo.head_dim = 32
    mo.d_ff = 512
    mo.rope_theta = 100_000.0
    mo.norm_eps = 1e-6
    mo.num_pred_heads = 1  # heads predicting t+1 .. t+num_pred_heads over the full vocabulary
    mo.num_raw_pred_heads = 0  # extra 320-way heads, trained only where all their targets are raw
    mo.attention = "xla"  # "xla" | "cudnn" (GPU) | "splash" (TPU) | "eva" (EvaByte's, proxy_jax.model.eva)
    # eva: exact attention inside aligned windows of this many tokens; a seq_len above it that is not a
    # multiple is padded up to one inside the layer (correct, but the padding costs compute)
    mo.eva_window = 2048
    mo.eva_chunk = 8  # eva: earlier windows are seen as one pooled summary per chunk of this many keys
    mo.dtype = "bfloat16"  # compute dtype; parameters are float32
    mo.param_dtype = "float32"
    # Layers as one scanned block (True) or unrolled (False); the parameter trees differ ("layers" stacked
    # vs "layer_i"), so a run keeps the value it started with. "auto": scan on TPU and GPU (compile time
    # flat in depth) and on a CPU from 16 layers (model.args.SCAN_MIN_LAYERS_CPU); smaller CPU models run
    # unrolled, about 10% faster per step on XLA's CPU backend (launch/bench_step.py, BENCHMARKS.md).
    # Resolved once when a run is first built and written into config.json and run.json as True/False.
    mo.scan_layers = ml_collections.FieldReference("auto", field_type=object)
    # Rematerialisation and the chunked loss (below) are off by default: they trade step time for memory
    # (on a CPU at d_model 128 remat "full" costs ~20% and loss_chunk=128 ~6%), which only large models
    # need: the GPU presets set both (recipes.GPU_SETTINGS); the paper-scale TPU meshes (recipes.TPU_MESH)
    # were sized with remat "full".
    mo.remat_policy = "none"  # "none" | "full" | "dots" | "dots_with_no_batch_dims"
    # Embedding and output-head rows (0 = the proxy's vocabulary, 320 + symbols, rounded up to a multiple of
    # 128). Rows above the vocabulary are never scored, emitted or exported. Saved runs that name this
    # key model.vocab_size load as before.
    mo.padded_vocab_size = 0
    # Positions per chunk of the output heads + cross-entropy (0 = off: all B x L x V logits at once).
    # With large vocabularies (32k-97k) the logits dominate activation memory; 512-2048 keeps them
    # small at the cost of recomputing each chunk's head matmul in the backward pass.
    mo.loss_chunk = 0

    # ---- mesh and sharding --------------------------------------------------------------
    c.mesh = me = _section('mesh')
    me.shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices
    me.axis_names = ("data", "fsdp", "tensor")
    # logical axis -> mesh axes (rules are data: change them here, not in the model)
    me.rules = (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("embed", "fsdp"),
        ("vocab", "tensor"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("layers", None),
    )

    # ---- optimiser ----------------------------------------------------------------------
    c.opt = o = _section('opt')
    o.lr = 1.2e-3
    o.warmup_steps = 500
    o.min_lr_ratio = 0.1  # cosine floor as a fraction of lr
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-15
    o.weight_decay = 0.1
    o.weight_decay_mask = "matrices"  # "matrices" (no decay on norms/1-D params) | "all" | "none"
    o.clip_norm = 1.0
    o.grad_accum_steps = 1

    # ---- training loop ------------------------------------------------------------------
    c.train = t = _section('train')
    # Optimiser steps. Set through --config.train.steps or recipes.load_config, it rescales what a recipe
    # derived from it (recipes.STEP_SCALED: mixing phases, opt.warmup_steps, checkpoint and eval cadence).
    t.steps = 50_000
    t.log_every = 10
    # Without a terminal (stderr not a TTY, not a notebook: pods, CI, a log file) progress is one plain line
    # (step, loss, steps/s, ETA) every this many seconds instead of a tqdm bar (proxy_jax.progress).
    t.progress_every_s = 30.0
    t.eval_every = 1000
    t.eval_docs = 0  # held-out documents used by eval during training (0 = all)
    t.eval_window = 4096  # eval windows of this many tokens, stride = window
    t.eval_batch_size = 8
    t.checkpoint_every = 1000
    t.keep_checkpoints = 3  # the newest N checkpoints are kept (plus the healthy ones below)
    # Checkpoint health (proxy_jax.health): a step is normal when its loss and gradient norm are finite and
    # at most these ratios times the median of the last health_window normal steps. A median, because it
    # follows the falling loss and one outlier does not move it; only normal steps enter it, so a divergence
    # never becomes the new normal. Measured on tiny CPU runs: a normal step's loss stays within 1.15x of
    # that median and its gradient norm within 2.2x, while a diverged model's gradient norm is NaN/inf or
    # far above. A checkpoint is healthy when the step before it and the first step from it are normal; the
    # non-finite error names the newest healthy one. No extra device sync: the loop reads both anyway.
    t.health_window = 32
    t.health_loss_ratio = 1.5
    t.health_grad_ratio = 10.0
    t.keep_healthy = 2  # the newest N healthy checkpoints are kept even when older than keep_checkpoints
    # Stop (naming the newest healthy checkpoint) after this many consecutive steps out of the normal range
    # while still finite (0 = never: such steps only mark their checkpoints unhealthy).
    t.spike_patience = 0
    # Roll back: resume from checkpoint N, moving newer ones to checkpoints.set_aside/ (never deleted); 0
    # sets every checkpoint aside and starts over. Applied once: a rerun whose newest checkpoint descends
    # from this rollback (and is not marked unhealthy) resumes from the newest as usual. -1 = newest.
    t.resume_step = -1
    # Trackers (proxy_jax.tracking), comma-separated: "tensorboard" (event files in {workdir}/tensorboard),
    # "wandb" (Weights & Biases, pip install 'proxy_jax[wandb]'); '' = metrics.jsonl only. Each gets every row
    # metrics.jsonl gets, at the same step, from process 0. An unknown or uninstalled tracker stops the run
    # before it touches the workdir.
    t.trackers = "tensorboard"
    t.tensorboard = True  # False drops "tensorboard" from train.trackers (the older switch, still honoured)
    # W&B (train.trackers includes "wandb"); '' = W&B's own WANDB_PROJECT / WANDB_ENTITY / WANDB_TAGS /
    # WANDB_RUN_GROUP / WANDB_JOB_TYPE environment variables (project default "proxy_jax"). The W&B run id is
    # kept in {workdir}/wandb_run_id: a resumed run continues the same W&B run. A sweep sets the group to the
    # sweep's name and the job type to the run's method.
    t.wandb_project = ""
    t.wandb_entity = ""
    t.wandb_tags = ""  # comma-separated
    t.wandb_group = ""
    t.wandb_job_type = ""
    # A jax.profiler trace of steps profile_start_step .. + profile_num_steps - 1 in {workdir}/profile/
    # (TensorBoard's profile plugin, Perfetto; README "Tracking, profiles and benchmark tasks while training").
    # -1 = no trace. Tracing changes no number of the run.
    t.profile_start_step = -1
    t.profile_num_steps = 5
    t.profile_process = 0  # the process that traces (-1 = every process, one file per host)
    # lm-evaluation-harness tasks (comma-separated) scored with the training parameters at every eval_every
    # and at the end, in the same process (the native backend, proxy_jax.evaluation.lm_eval_backend), logged
    # as eval/lm_eval/<task>/<metric>. Needs pip install 'proxy_jax[lmeval]'; a task that does not load
    # stops the run before it touches the workdir. '' = none.
    t.lm_eval_tasks = ""
    t.lm_eval_include_path = ""  # a folder of extra task YAML files (lm-eval's --include_path)
    t.lm_eval_limit = 0  # documents per task (lm-eval's --limit); 0 = all
    t.sample_prompt = "def fibonacci(n):\n"  # printed sample at the end of training ('' = none)
    t.sample_bytes = 200
    t.sample_temperature = 1.0  # 0 = greedy (small models then tend to repeat one byte, often a space)
    t.sample_top_p = 0.95
    c.lock()  # the schema is closed: a misspelt key is an error, not a new key
    return c


def parent_of(config: ml_collections.ConfigDict, key: str) -> ml_collections.ConfigDict:
    """The section holding the dotted ``key``; a key that does not exist is a ``KeyError`` naming the closest."""
    node = config
    *parents, leaf = key.split(".")
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise KeyError(unknown_key(".".join(parents[: i + 1]), node.keys()))
        node = node[name]
    if leaf not in node:
        raise KeyError(unknown_key(key, node.keys()))
    return node


def override(config: ml_collections.ConfigDict, **dotted) -> ml_collections.ConfigDict:
    """Sets dotted keys (``override(c, **{"data.seq_len": 128})``) in place; returns ``config``.

    A key that does not exist is an error naming it and the closest key: overrides never add keys.
    """
    for key, value in dotted.items():
        parent_of(config, key)[key.rpartition(".")[2]] = value
    return config


def num_targets(model) -> int:
    """K, how many future tokens each position predicts (rows carry ``seq_len + K`` tokens), of ``config.model``
    or a ``ModelArgs``: the one place it is derived."""
    return int(model.num_pred_heads) + int(model.num_raw_pred_heads)


def _positive(value, key: str, *, zero_ok: bool = False) -> None:
    if not (value >= 0 if zero_ok else value > 0):
        raise ValueError(f"--config.{key}={value} must be {'>= 0' if zero_ok else '> 0'}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks each scalar's own range; raises one sentence naming the bad value.

    Names (proxy, source, modes, attention, remat policy) are checked by the code that implements them,
    and what depends on the devices by ``proxy_jax.sharding.validate``; ``proxy_jax.assemble.validate``
    runs all of these before anything is built.
    """
    for key in ("seq_len", "batch_size"):
        _positive(config.data[key], f"data.{key}")
    for key in ("num_workers", "num_epochs", "max_doc_bytes", "virtual_shards"):
        _positive(config.data[key], f"data.{key}", zero_ok=True)
    host_prefetch = config.data.host_prefetch
    if isinstance(host_prefetch, bool) or not isinstance(host_prefetch, int) or host_prefetch < 0:
        raise ValueError(f"--config.data.host_prefetch={host_prefetch!r} must be a whole number >= 0: the batches "
                         "packed ahead in a background thread (2 is plenty; 0 turns it off).")
    if not 0.0 <= config.data.val_fraction < 1.0:
        raise ValueError(f"--config.data.val_fraction={config.data.val_fraction} must lie in [0, 1).")
    if config.data.index not in ("auto", "full", "lazy"):
        raise ValueError(f"--config.data.index={config.data.index!r} is not one of auto, full, lazy.")
    if config.data.index == "lazy" and config.data.max_doc_bytes:
        raise ValueError(f"--config.data.index='lazy' cannot cut documents (--config.data.max_doc_bytes="
                         f"{config.data.max_doc_bytes} needs every size before training); set max_doc_bytes=0 "
                         "or index='full'.")
    if config.data.source != "stdlib" and not config.data.path and not config.data.get("mixture"):
        raise ValueError(f"--config.data.source={config.data.source!r} needs --config.data.path.")
    if config.data.virtual_shards and config.data.batch_size % config.data.virtual_shards:
        raise ValueError(f"--config.data.batch_size={config.data.batch_size} is not divisible by "
                         f"--config.data.virtual_shards={config.data.virtual_shards}; each shard packs "
                         "batch_size/virtual_shards rows.")
    _positive(config.train.steps, "train.steps")
    for key in ("log_every", "checkpoint_every", "eval_window", "eval_batch_size", "progress_every_s"):
        _positive(config.train[key], f"train.{key}")
    for key in ("health_window", "keep_checkpoints"):
        _positive(config.train[key], f"train.{key}")
    for key in ("keep_healthy", "spike_patience"):
        _positive(config.train[key], f"train.{key}", zero_ok=True)
    for key in ("health_loss_ratio", "health_grad_ratio"):
        if not config.train[key] > 1.0:
            raise ValueError(f"--config.train.{key}={config.train[key]} must be > 1: the multiple of the recent "
                             "median above which a step is out of its normal range.")
    for key in ("profile_start_step", "profile_process"):
        if config.train[key] < -1:
            raise ValueError(f"--config.train.{key}={config.train[key]} must be >= 0, or -1 ("
                             f"{'no trace' if key == 'profile_start_step' else 'every process'}).")
    _positive(config.train.profile_num_steps, "train.profile_num_steps")
    _positive(config.train.lm_eval_limit, "train.lm_eval_limit", zero_ok=True)
    if config.train.resume_step < -1:
        raise ValueError(f"--config.train.resume_step={config.train.resume_step} must be a checkpoint step, 0 (start "
                         "over) or -1 (the newest checkpoint).")
    _positive(config.opt.grad_accum_steps, "opt.grad_accum_steps")
    _positive(config.model.loss_chunk, "model.loss_chunk", zero_ok=True)
    if config.data.batch_size % config.opt.grad_accum_steps:
        raise ValueError(f"--config.data.batch_size={config.data.batch_size} is not divisible by "
                         f"--config.opt.grad_accum_steps={config.opt.grad_accum_steps}.")
    if config.data.raw_only_of_mix and config.proxy.name == "bytes":
        raise ValueError("--config.data.raw_only_of_mix=True is the control of a proxy run: set "
                         "--config.proxy.name to the proxy run's compressor (e.g. 'tokenizer'), not 'bytes'.")
    uses_comp = max(config.mix.rate_init, config.mix.rate_peak, config.mix.rate_final) > 0
    if uses_comp and config.proxy.name == "bytes" and config.mix.mode_steady != "vanilla":
        raise ValueError("--config.proxy.name='bytes' has no compressed view: use mix modes 'vanilla' with "
                         "rates 0 for the byte baseline, or pick a compressing proxy.")
