"""Ingestion: load -> split -> embed -> quantize -> write. Never imports ``service``."""
