"""The error hierarchy. Every message says what to do next."""


class RagError(Exception):
    """Base class of every error Verity raises on purpose."""


class ConfigError(RagError):
    """The configuration is wrong or points at something missing."""


class StoreError(RagError):
    """The database could not be reached or refused an operation."""


class EmbedderError(RagError):
    """The embedding model could not be loaded or run."""


class GenerationError(RagError):
    """The model server failed, timed out or could not be started."""


class RerankError(RagError):
    """The reranker could not be loaded, or its server failed or timed out."""


class NotFoundError(RagError):
    """A collection, document or job does not exist (or is not visible to the caller)."""


class LoaderError(RagError):
    """A file could not be read into text."""
