"""The HTTP API. Never imports ``ingest``."""
