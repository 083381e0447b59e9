"""The query path shared by the service, ``verity ask`` and eval.

Retrieve, fuse, rerank, correct (CRAG), pack, generate, ground citations, guard (PII, injection).
"""
