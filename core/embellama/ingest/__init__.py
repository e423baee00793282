"""Ingest a corpus into a vector database (extras ``ray``, ``lancedb``): ``embellama ingest``.

Reading in bounded batches (:mod:`~embellama.ingest.corpus`), embedding in this process or on Ray/Daft
(:mod:`~embellama.ingest.ray`, :mod:`~embellama.ingest.daft`), and writing exactly once to LanceDB
(:mod:`~embellama.ingest.lancedb`).
"""
