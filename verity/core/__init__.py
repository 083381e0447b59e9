"""The kernel: domain types, errors, protocols, settings and text utilities.

Imports nothing else of Verity's and no database, model or HTTP library.
"""
