"""The output stage of a model: small *heads*, each turning what the step before it produced into what the next
one takes (see :mod:`embellama.model.heads.base`), put together per loaded model by
:func:`embellama.model.heads.pipeline.build_pipeline`.

Read-out heads take what a forward's decodes left (:class:`~embellama.model.heads.base.Decoded`) and give one row
per sequence: llama.cpp's pooled rows (:mod:`~embellama.model.heads.native_rows`), a reranker's scores
(:mod:`~embellama.model.heads.rank_score`), or each sequence's token rows (:mod:`~embellama.model.heads.token_rows`)
pooled in numpy (:mod:`~embellama.model.heads.pooling`). Output heads turn a text's row into the vector the caller
gets: Matryoshka truncation (:mod:`~embellama.model.heads.matryoshka`), then normalization
(:mod:`~embellama.model.heads.normalization`).
"""
