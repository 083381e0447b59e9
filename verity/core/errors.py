"""The error hierarchy. Every message says what to do next."""


class RagError(Exception):
    """Base class of every error Verity raises on purpose."""


class ConfigError(RagError, ValueError):
    """The configuration or a request is wrong, or points at something missing.

    Also a ``ValueError``, so validators (pydantic, typer) treat it as bad input.
    """


class StoreError(RagError):
    """The database could not be reached or refused an operation."""


class StoreUnavailable(StoreError):
    """The database is down, restarting or out of connections: the same call may succeed
    in a few seconds. Work that meets it is retried, never recorded as failed."""


class EmbedderError(RagError):
    """The embedding model could not be loaded or run."""


class GenerationError(RagError):
    """The model server failed, timed out or could not be started."""


class RerankError(RagError):
    """The reranker could not be loaded, or its server failed or timed out."""


class NotFoundError(RagError):
    """A collection, document or job does not exist (or is not visible to the caller)."""


class ConflictError(RagError):
    """The object already exists (e.g. creating a collection twice)."""


class LoaderError(RagError):
    """A file could not be read into text."""


class AuthError(RagError):
    """No valid API key was presented."""


class ForbiddenError(RagError):
    """The key is valid but may not do this (e.g. a non-admin key managing keys)."""


class RateLimitError(RagError):
    """Too many requests for this key; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BusyError(RagError):
    """The model server's queue is full; retry after ``retry_after_s`` seconds.

    Not a :class:`GenerationError`: the answer is refused (503) rather than degraded
    to sources only, so the client knows to come back.
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CancelledError(RagError):
    """The caller went away before the answer was ready; its generation was stopped."""
