"""Verity's core: domain types, protocols, settings, errors and the shared backends.

Both ``ingest`` and ``service`` import from here; neither imports the other.
"""
