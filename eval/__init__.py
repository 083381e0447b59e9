"""The evaluation harness. Uses ``core`` or the HTTP API only."""
