"""``PgvectorStore`` against the ``Store`` contract, on the embedded Postgres."""

from __future__ import annotations

import pytest

from tests.conformance.store import StoreConformance, StoreFactory
from verity.backends.stores.database import Database
from verity.backends.stores.factory import STORE_KINDS, build_store
from verity.backends.stores.pgvector_store import PgvectorStore

pytestmark = pytest.mark.integration


class TestPgvectorStore(StoreConformance):
    @pytest.fixture
    def store_factory(self, database: Database) -> StoreFactory:
        return lambda tenant: PgvectorStore(database, tenant=tenant)


def test_build_store_makes_each_kind_and_refuses_others(database: Database) -> None:
    assert STORE_KINDS == ("pgvector",)
    store = build_store(database, kind="pgvector", tenant="acme")
    assert isinstance(store, PgvectorStore) and store.tenant == "acme"
    assert build_store(database).tenant == "default"
    with pytest.raises(ValueError, match="pgvector"):
        build_store(database, kind="chroma")
