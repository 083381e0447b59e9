"""Adapters, one module per provider and role: stores, embedders, generators, rerankers, connectors."""
