"""The text formats: documents decode back to their bytes, evaluation writes a document exactly as training
did, the allowed-ids mask is exactly what a format writes after its prompt prefix, and stop ids end
generation."""

import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from proxy_jax import generate, text_format, vocab
from proxy_jax.data import mixing

FORMATS = [text_format.get(name) for name in text_format.NAMES]
NUM_SYMBOLS = 40


class ToyProxy:
    """A lossless stand-in for a tokenizer: byte pairs to one of ``NUM_SYMBOLS`` symbols is lossy, so each
    byte becomes symbol ``b % NUM_SYMBOLS`` and a second symbol ``b // NUM_SYMBOLS``."""

    def encode(self, data: bytes) -> np.ndarray:
        b = np.frombuffer(data, np.uint8).astype(np.int64)
        return vocab.encode_comp(np.stack([b % NUM_SYMBOLS, b // NUM_SYMBOLS], 1).reshape(-1))

    def decode(self, ids) -> bytes:
        s = vocab.decode_comp(np.asarray(ids)).reshape(-1, 2)
        return (s[:, 0] + NUM_SYMBOLS * s[:, 1]).astype(np.uint8).tobytes()


def _docs():
    rng = np.random.default_rng(0)
    return helpers.stdlib_docs(8, 500) + [b"", bytes(range(256)), rng.integers(0, 256, 700, np.uint8).tobytes()]


@pytest.mark.parametrize("fmt", FORMATS, ids=text_format.NAMES)
def test_document_ids_decode_back_to_the_bytes(fmt):
    proxy = ToyProxy()
    for doc in _docs():
        ids = fmt.document_ids(doc, proxy.encode)
        assert ids.dtype == vocab.ID_DTYPE
        assert ids[: len(fmt.prefix)].tolist() == list(fmt.prefix)
        assert fmt.prompt_ids(doc, proxy.encode).tolist() == ids[: ids.size - 1 - fmt.sentinels].tolist()
        text = ids[len(fmt.prefix):]
        end = int(np.flatnonzero(~fmt.scored(text))[0])  # the first id after the text
        assert int(text[end]) in fmt.stop_ids  # a document's text ends with a stop id
        assert fmt.decode(text[:end], proxy.decode) == doc
        assert int(fmt.scored(ids).sum()) == end


@pytest.mark.parametrize("fmt", FORMATS, ids=text_format.NAMES)
def test_allowed_mask_is_exactly_what_the_format_writes(fmt):
    """The union of the ids after the prompt prefix over documents that use every byte (and symbol) is the mask."""
    vocab_size = vocab.vocab_size(NUM_SYMBOLS)
    padded = vocab.padded_vocab_size(NUM_SYMBOLS)
    written = set()
    for doc in _docs():
        written |= set(fmt.document_ids(doc, ToyProxy().encode)[len(fmt.prefix):].tolist())
    mask = fmt.allowed_mask(padded, vocab_size)
    assert mask.shape == (padded,)
    assert set(np.flatnonzero(mask).tolist()) == written
    assert not mask[vocab_size:].any()  # padded rows are never chosen


@pytest.mark.parametrize("mode,arrangement,name", [("sentinel", mixing.RAW, "sentinel"),
                                                   ("translation_random", mixing.RAW, "sentinel"),
                                                   ("vanilla", mixing.RAW, "plain"),
                                                   ("vanilla", mixing.COMP, "compressed")])
def test_evaluation_writes_documents_as_training_did(mode, arrangement, name):
    proxy = ToyProxy()
    for doc in _docs():
        raw, comp = vocab.encode_raw(doc), proxy.encode(doc)
        emitted = mixing.emit_arrangement(raw, comp, mode=mode, arrangement=arrangement).ids
        assert emitted.tolist() == text_format.get(name).document_ids(doc, proxy.encode).tolist()


def test_the_format_of_a_mix():
    mix = helpers.mix_config
    assert text_format.of_mix(mix()) is text_format.SENTINEL
    assert text_format.of_mix(mix(rates=(0, 0, 0), modes=("vanilla",) * 3)) is text_format.PLAIN
    assert text_format.of_mix(mix(rates=(1, 1, 1), modes=("vanilla",) * 3)) is text_format.COMPRESSED
    assert text_format.of_mix(mix(rates=(1, 1, 1), modes=("vanilla", "vanilla", "sentinel"))) is text_format.SENTINEL
    with pytest.raises(ValueError, match=r"^text format 'bytes_plain' is not one of 'sentinel', 'plain', 'compressed'"):
        text_format.get("bytes_plain")


def test_translation_prompt_is_the_opening_of_a_training_pair():
    proxy = ToyProxy()
    for doc in _docs():
        pair = mixing.emit_arrangement(vocab.encode_raw(doc), proxy.encode(doc), mode="translation_raw_first",
                                       arrangement=mixing.PAIR_RAW_FIRST).ids
        prompt = text_format.translation_prompt_ids(doc)
        assert pair[: prompt.size].tolist() == prompt.tolist() and prompt[-1] == vocab.COMP_OPEN
        written = set(pair[prompt.size:].tolist())
        mask = text_format.translation_allowed_mask(512, vocab.vocab_size(NUM_SYMBOLS))
        assert written <= set(np.flatnonzero(mask).tolist())
        assert int(pair[-2]) in text_format.TRANSLATION_STOP_IDS


@pytest.mark.parametrize("fmt", FORMATS, ids=text_format.NAMES)
def test_a_stop_id_ends_generation(fmt):
    """With the final norm zeroing the hidden state all logits tie and greedy takes the lowest allowed id,
    EOS, a stop id of every format: every row ends at once with no text."""
    import flax.linen as nn
    import jax

    from proxy_jax import config as config_lib
    from proxy_jax import model as model_lib

    config = config_lib.base_config()
    config.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64, dtype="float32")
    args = model_lib.ModelArgs.from_config(config.model, vocab.vocab_size(NUM_SYMBOLS))
    model = model_lib.Transformer(args)
    z = jnp.zeros((1, 1), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), z, z, z)["params"])
    params = {**params, "final_norm": {"scale": -jnp.ones_like(params["final_norm"]["scale"])}}
    out = generate.generate(model, params, [b"def f", b"x"], max_new_bytes=4, fmt=fmt, proxy=ToyProxy())
    assert out == [b"", b""]
    assert vocab.EOS in fmt.stop_ids and min(np.flatnonzero(fmt.allowed_mask(512, 360))) == vocab.EOS
