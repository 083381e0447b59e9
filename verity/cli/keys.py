"""``verity keys``: create, list and revoke API keys."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from verity.cli.common import clean_errors, configure_logging, load_settings
from verity.core.settings import validate_collection_name

if TYPE_CHECKING:
    from verity.backends.stores.api_keys import ApiKeys

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@contextmanager
def _api_keys() -> Iterator[ApiKeys]:
    """The key store of the configured database, open for the block."""
    from verity.answering.runtime import open_runtime
    from verity.backends.stores.api_keys import ApiKeys

    configure_logging(logging.WARNING)
    with open_runtime(load_settings(), generator=False, reranker=False) as runtime:
        yield ApiKeys(runtime.db)


@app.command("create")
@clean_errors
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key belongs to")] = "default",
    name: Annotated[str, typer.Option(help="a label, e.g. the app using it")] = "",
    group: Annotated[list[str] | None, typer.Option(help="an ACL group of the caller")] = None,
    admin: Annotated[bool, typer.Option(help="may manage keys, collections and documents")] = False,
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    with _api_keys() as keys:
        key, info = keys.create(tenant=validate_collection_name(tenant), name=name,
                                groups=tuple(group or ()), is_admin=admin)
    typer.echo(key)
    typer.echo(f"id {info.id}, tenant {info.tenant}, groups {list(info.groups)}, "
               f"{'admin' if info.is_admin else 'user'}: store the key now; it is not shown again",
               err=True)


@app.command("list")
@clean_errors
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None) -> None:
    """List keys (ids, prefixes, tenants, groups), never the keys themselves."""
    with _api_keys() as keys:
        listed = keys.list(tenant=tenant)
    for k in listed:
        state = "revoked" if k.revoked else ("admin" if k.is_admin else "user")
        typer.echo(f"{k.id}\t{k.prefix}...\t{k.tenant}\t{','.join(k.groups) or '-'}\t{state}"
                   f"\t{k.name}")


@app.command("revoke")
@clean_errors
def keys_revoke(key_id: Annotated[int, typer.Argument(help="the key's id (see keys list)")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    with _api_keys() as keys:
        keys.revoke(key_id)
    typer.echo(f"revoked key {key_id}")
