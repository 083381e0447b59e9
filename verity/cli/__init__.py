"""The ``verity`` command line."""
