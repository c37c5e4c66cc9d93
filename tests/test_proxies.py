"""Proxies on real data (the standard library's .py files) and on hostile bytes."""

import gzip
import os
import pickle
import time
import types

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from helpers import config_with
from proxy_jax import assemble, vocab
from proxy_jax.data import corpus
from proxy_jax.proxies import NAMES as PROXIES
from proxy_jax.proxies import (BytesProxy, GzipProxy, TokenizerProxy, TokensAsBytesProxy, make_proxy,
                               tokenizer as tokmod, tokenizer_training, train_tokenizer)

VOCAB = 1024
TRAIN_BYTES = 3_000_000


@pytest.fixture(scope="module")
def train_split():
    return corpus.load_split(config_with().data, "train")


@pytest.fixture(scope="module")
def val_split():
    return corpus.load_split(config_with().data, "validation")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("proxy_workdir"))


def _config(name="tokenizer", **proxy):
    return config_with(**{"proxy.name": name, "proxy.vocab_size": VOCAB, "proxy.train_max_bytes": TRAIN_BYTES,
                          **{f"proxy.{k}": v for k, v in proxy.items()}})


@pytest.fixture(scope="module")
def tokenizer(workdir):
    return assemble.make_proxy(_config(), workdir=workdir)


def _hostile_docs():
    rng = np.random.default_rng(123)
    docs = [b"", b"\n", b" ", b"    \n\t\t  \r\n", b"x", b"0123456789" * 7, b"\x00\x01\x02"]
    docs += [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1, 2, 3, 17, 300, 5000)]
    docs += [b"\xff\xfe" + "déjà vu ▁ space ▁▁mark".encode() + b"\xc3(\xa0\xa1\xe2\x82",  # invalid UTF-8
             "\u2581".encode(), "▁leading and trailing▁".encode(),
             "é中文 😀 \u200b\ufeff\u00a0\u3000\u2028\u2029\x85".encode(),  # odd whitespace and non-BMP
             b"\xed\xa0\x80\xed\xb0\x80",  # UTF-8 encoded surrogates (invalid)
             "A\u030a \u212b \ufb01".encode(),  # NFKC would change these
             "\t\x0b\x0c\r\x1c\x1d\x1e\x1f".encode() * 3]
    return docs


def _sample(split, every=25):
    return [split[i] for i in range(0, len(split), every)]


PROXY_NAMES = ["bytes", "gzip", "tokenizer", "tokens_as_bytes", "tokens_as_bytes_gray"]


@pytest.fixture(scope="module")
def proxies(tokenizer, workdir):
    return {
        "bytes": BytesProxy(),
        "gzip": GzipProxy(9),
        "tokenizer": tokenizer,
        "tokens_as_bytes": assemble.make_proxy(_config("tokens_as_bytes"), workdir=workdir),
        "tokens_as_bytes_gray": assemble.make_proxy(_config("tokens_as_bytes", gray_code=True), workdir=workdir),
    }


@pytest.mark.parametrize("name", PROXY_NAMES)
def test_round_trip_and_id_range(name, proxies, train_split):
    proxy = proxies[name]
    lo, hi = (64, 320) if name == "bytes" else (320, 320 + proxy.num_symbols)
    docs = _sample(train_split) + _hostile_docs()
    encoded = proxy.encode_batch(docs)
    for doc, ids in zip(docs, encoded):
        assert ids.dtype == np.int32 and ids.ndim == 1
        assert ids.size == 0 or (ids.min() >= lo and ids.max() < hi), (name, doc[:40])
        assert proxy.decode(ids) == doc
        assert np.array_equal(proxy.encode(doc), ids)  # batch and single paths agree
    assert proxy.lossless


@pytest.mark.parametrize("name", PROXY_NAMES)
def test_deterministic_across_instances_and_pickling(name, proxies, train_split, workdir):
    proxy = proxies[name]
    if name == "bytes":
        other = BytesProxy()
    elif name == "gzip":
        other = GzipProxy(9)
    else:
        other = assemble.make_proxy(_config("tokens_as_bytes" if name != "tokenizer" else "tokenizer",
                                   gray_code=name.endswith("gray")), workdir=workdir)
    clone = pickle.loads(pickle.dumps(proxy))
    for doc in _sample(train_split, every=97) + _hostile_docs():
        a = proxy.encode(doc)
        assert np.array_equal(a, other.encode(doc)) and np.array_equal(a, clone.encode(doc))
    assert proxy.manifest() == other.manifest() == clone.manifest()


def test_empty_document_encodes_to_nothing(proxies):
    for name in ("bytes", "tokenizer", "tokens_as_bytes", "tokens_as_bytes_gray"):
        assert proxies[name].encode(b"").size == 0 and proxies[name].decode(np.zeros(0, np.int32)) == b""
    assert proxies["gzip"].decode(proxies["gzip"].encode(b"")) == b""


def test_gzip_stream_is_deterministic_gzip(train_split):
    doc = train_split[0]
    ids = GzipProxy(9).encode(doc)
    stream = (ids - 320).astype(np.uint8).tobytes()
    assert stream[:2] == b"\x1f\x8b" and stream[4:8] == b"\0\0\0\0"  # magic, mtime 0
    assert not stream[3] & 0x08  # no file name in the header
    assert gzip.decompress(stream) == doc
    assert len(stream) < len(doc)
    with pytest.raises(ValueError, match="gzip"):
        GzipProxy().decode(np.array([320, 321, 322], np.int32))
    with pytest.raises(ValueError, match="gzip_level"):
        GzipProxy(11)


def test_tokenizer_lossless_on_every_stdlib_file(tokenizer, train_split, val_split):
    """Every file of the corpus (train and held out) survives encode -> decode exactly."""
    t0 = time.perf_counter()
    n_bytes = n_tokens = 0
    for split in (train_split, val_split):
        docs = list(split)
        for doc, ids in zip(docs, tokenizer.encode_batch(docs)):
            assert tokenizer.decode(ids) == doc
            n_bytes += len(doc)
            n_tokens += ids.size
    assert n_bytes == train_split.stats["bytes"] + val_split.stats["bytes"]
    print(f"\nlossless on {len(train_split) + len(val_split)} files, {n_bytes / 1e6:.1f} MB, "
          f"{time.perf_counter() - t0:.1f} s, {n_bytes / n_tokens:.3f} bytes/token")


def test_tokenizer_ratio_on_held_out_stdlib(tokenizer, val_split):
    n_bytes = val_split.stats["bytes"]
    n_tokens = sum(ids.size for ids in tokenizer.encode_batch(list(val_split)))
    ratio = n_bytes / n_tokens
    print(f"\nvocab {VOCAB}, trained on {TRAIN_BYTES / 1e6:.0f} MB: {ratio:.3f} bytes/token on held-out stdlib")
    # BPE with 1024 pieces on Python code compresses well beyond bytes but below a large vocabulary.
    assert 2.0 < ratio < 4.0
    gz = sum(GzipProxy().encode(d).size for d in val_split)
    assert n_tokens > gz * 0.5  # sanity: not better than twice gzip at this size


def test_tokenizer_never_emits_unk(tokenizer):
    docs = _hostile_docs() + [bytes(range(256)) * 4, "\U0010fffd\U000e0100 \uffff".encode()]
    unk = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto).unk_id() + 320  # independent reader
    for doc in docs:
        assert unk not in tokenizer.encode(doc).tolist()


def test_tokenizer_cache_is_reused(workdir, monkeypatch, tokenizer):
    files = os.listdir(os.path.join(workdir, "proxy"))
    assert any(f.startswith(f"tokenizer-v{VOCAB}-") and f.endswith(".model") for f in files)
    monkeypatch.setattr(tokenizer_training, "train_tokenizer", lambda *a, **k: pytest.fail("retrained a cached tokenizer"))
    again = assemble.make_proxy(_config(), workdir=workdir)
    assert again.model_sha256 == tokenizer.model_sha256
    # A different setting is a different cache entry (fingerprint includes the settings).
    assert tokenizer_training.tokenizer_fingerprint(VOCAB, TRAIN_BYTES, "x") != tokenizer_training.tokenizer_fingerprint(VOCAB + 1,
                                                                                                  TRAIN_BYTES, "x")


def test_training_is_deterministic(tmp_path, train_split):
    docs = [train_split[i] for i in range(0, 200, 2)]
    a = train_tokenizer(docs, 400, str(tmp_path / "a"), 400_000)
    b = train_tokenizer(docs, 400, str(tmp_path / "b"), 400_000)
    assert open(a, "rb").read() == open(b, "rb").read()
    tok = TokenizerProxy.from_file(a)
    assert tok.num_symbols == 400
    doc = train_split[3]
    assert tok.decode(tok.encode(doc)) == doc


def test_train_docs_callable_and_model_path(tmp_path, train_split, monkeypatch):
    docs = [train_split[i] for i in range(40)]
    with pytest.raises(ValueError, match="raise it to at least"):
        make_proxy(_config(vocab_size=300, train_max_bytes=200_000).proxy, train_docs=lambda: iter(docs))
    c = _config(vocab_size=500, train_max_bytes=200_000)
    p = make_proxy(c.proxy, workdir=str(tmp_path), train_docs=lambda: iter(docs))
    assert p.num_symbols == 500
    (path,) = [os.path.join(tmp_path, "proxy", f) for f in os.listdir(tmp_path / "proxy")]
    c2 = _config(model_path=path, vocab_size=12345)  # vocab_size is ignored with a model_path
    q = make_proxy(c2.proxy)
    assert q.model_sha256 == p.model_sha256 and q.num_symbols == 500
    with pytest.raises(FileNotFoundError, match="model_path"):
        make_proxy(_config(model_path=str(tmp_path / "missing.model")).proxy)


def test_user_model_normaliser_is_made_lossless(tmp_path, tokenizer):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.model_proto)
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    path = tmp_path / "user.model"
    path.write_bytes(proto.SerializeToString())
    user = TokenizerProxy.from_file(str(path))
    assert user.normalizer_overridden
    doc = b"  two  spaces   and\n\n  newlines  "
    assert user.decode(user.encode(doc)) == doc


def test_model_without_byte_fallback_is_rejected(tmp_path, train_split):
    text = train_split[0].decode("utf-8")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_prefix=str(tmp_path / "nb"),
                                   vocab_size=200, model_type="bpe", byte_fallback=False, minloglevel=2,
                                   character_coverage=1.0)
    with pytest.raises(ValueError, match="byte_fallback=True"):
        TokenizerProxy.from_file(str(tmp_path / "nb.model"))


def test_gray_code_neighbours_differ_by_one_bit(proxies):
    tab = proxies["tokens_as_bytes_gray"]
    tok = tab.tokenizer
    n = tok.num_symbols
    order = sorted(range(n), key=lambda i: (tok.surfaces[i], i))
    codes = tab._to_code[order]
    assert sorted(codes.tolist()) == sorted(set(codes.tolist()))  # a bijection onto n codes
    diffs = codes[1:] ^ codes[:-1]
    assert all(bin(int(d)).count("1") == 1 for d in diffs)
    # Decoding inverts it: every single token round-trips through its 2-byte code.
    for piece in range(n):
        code = int(tab._to_code[piece])
        ids = np.array([320 + (code >> 8), 320 + (code & 255)], np.int32)
        assert tab.decode(ids) == tok.surfaces[piece]
    assert np.array_equal(tokmod.inverse_gray(tokmod.gray(np.arange(70000))), np.arange(70000))


def test_tokens_as_bytes_layout(proxies):
    tab, tok = proxies["tokens_as_bytes"], proxies["tokenizer"]
    doc = b"def f(x):\n    return x + 1\n"
    pieces = tok.encode(doc) - 320
    ids = tab.encode(doc) - 320
    assert ids.size == 2 * pieces.size
    assert np.array_equal(ids[0::2] * 256 + ids[1::2], pieces)
    with pytest.raises(ValueError, match="pairs"):
        tab.decode(np.array([320], np.int32))
    with pytest.raises(ValueError, match="65536"):
        TokensAsBytesProxy(types.SimpleNamespace(num_symbols=70000))


def test_registry_errors_and_neural_dispatch(monkeypatch):
    """Names come from the registry; the neural proxy is built from what it is handed (an M1 or a loader,
    a sample or a function giving one); symbol counts from a config equal the built proxies'."""
    from proxy_jax.proxies import NeuralProxy, num_symbols

    with pytest.raises(ValueError) as e:
        make_proxy(_config("nope").proxy)
    for name in PROXIES:
        assert name in str(e.value)
    seen = {}

    def from_settings(cls, proxy_config, m1, sample_docs):
        seen["args"] = (proxy_config.name, m1, sample_docs)
        return NeuralProxy.__new__(NeuralProxy)

    monkeypatch.setattr(NeuralProxy, "from_settings", classmethod(from_settings))
    proxy = make_proxy(_config("neural", m1_workdir="/runs/m1").proxy, load_m1=lambda path: f"m1 of {path}",
                       sample_docs=lambda n: [b"x" * n])
    assert isinstance(proxy, NeuralProxy) and proxy.m1_workdir == "/runs/m1"
    assert seen["args"] == ("neural", "m1 of /runs/m1", [b"x" * 262_144])
    make_proxy(_config("neural", entropy_threshold=2.0).proxy, m1="m1", sample_docs=lambda n: pytest.fail("sampled"))
    assert seen["args"] == ("neural", "m1", seen["args"][2]) and callable(seen["args"][2])
    assert isinstance(make_proxy(_config("bytes").proxy), BytesProxy)
    assert make_proxy(_config("gzip", gzip_level=1).proxy).level == 1
    assert vocab.vocab_size(make_proxy(_config("gzip").proxy).num_symbols) == 576
    for name in ("bytes", "gzip", "tokens_as_bytes"):
        assert num_symbols(_config(name).proxy) == {"bytes": 0, "gzip": 256, "tokens_as_bytes": 256}[name]
    assert num_symbols(_config("neural", window_bits=12).proxy) == 4096
    assert num_symbols(_config(vocab_size=777).proxy) == 777


def test_manifests_rebuild_the_same_proxy(workdir, tokenizer, train_split):
    """A pinned manifest rebuilds a proxy that encodes exactly as the original; a changed artifact is refused."""
    from proxy_jax.proxies import from_manifest

    tok = assemble.make_proxy(_config(), workdir=workdir)
    tok.pin(workdir)
    manifest = tok.manifest()
    assert manifest["artifact"]["file"].startswith("proxy" + os.sep)
    tab = TokensAsBytesProxy(tok, gray_code=True)
    for proxy in (tok, tab, GzipProxy(3), BytesProxy()):
        again = from_manifest(proxy.manifest(), workdir=workdir)
        for i in range(5):
            assert np.array_equal(again.encode(train_split[i]), proxy.encode(train_split[i]))
    path = os.path.join(workdir, manifest["artifact"]["file"])
    original = open(path, "rb").read()
    try:
        with open(path, "ab") as f:
            f.write(b"\0")
        with pytest.raises(ValueError, match="sha256"):
            from_manifest(manifest, workdir=workdir)
    finally:
        with open(path, "wb") as f:
            f.write(original)
    with pytest.raises(FileNotFoundError, match="run.json"):
        from_manifest(manifest, workdir=os.path.dirname(workdir))


def test_proxy_settings_name_what_determines_the_output():
    from proxy_jax.proxies import proxy_settings
    assert proxy_settings(_config("bytes").proxy) == {"name": "bytes"}
    assert proxy_settings(_config("gzip", gzip_level=3).proxy) == {"name": "gzip", "gzip_level": 3}
    assert proxy_settings(_config().proxy) == {"name": "tokenizer", "vocab_size": VOCAB,
                                               "train_max_bytes": TRAIN_BYTES}
    user = proxy_settings(_config("tokens_as_bytes", model_path="/a/b/code.model", gray_code=True).proxy)
    assert user == {"name": "tokens_as_bytes", "gray_code": True, "model_file": "code.model"}
    neural = proxy_settings(_config("neural").proxy)
    assert neural["window_bits"] == 16 and "vocab_size" not in neural and "m1_workdir" not in neural
