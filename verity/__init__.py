"""Verity: retrieval-augmented question answering with grounded, cited answers.

The packages are layered; each imports only those below it (enforced by import-linter):

- ``verity.cli``: the ``verity`` command, wiring only.
- ``service``, ``ingest``, ``eval`` (top-level packages) and ``verity.tuner``: the applications.
- ``verity.answering``: the query path they share (retrieve, fuse, rerank, correct, pack,
  generate, ground citations, guards).
- ``verity.backends``: adapters to PostgreSQL/pgvector, FAISS, embedders, generators, the
  llama.cpp server, rerankers and connectors, with one factory per role.
- ``verity.core``: the kernel: types, errors, protocols, settings and text utilities.
"""
