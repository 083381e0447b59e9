"""Offline tuning: training a reranker on a collection's own text, without labels."""
