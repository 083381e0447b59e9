import numpy as np
import pytest

from core.errors import ConfigError, NotFoundError
from core.stores.pgvector_store import PgvectorStore
from core.types import Chunk, Document, Section, chunk_id, document_id

pytestmark = pytest.mark.integration

DIM = 16


def _doc(source: str, texts: list[str], store: PgvectorStore, collection: str,
         rng: np.random.Generator) -> tuple[Document, list[Chunk], np.ndarray]:
    doc = Document(source=source, title=source, content_hash=f"h-{source}-{len(texts)}",
                   sections=tuple(Section(t) for t in texts))
    did = document_id(collection=f"{store.tenant}/{collection}", source=source)
    chunks = [Chunk(id=chunk_id(did, i), document_id=did, ordinal=i, text=t)
              for i, t in enumerate(texts)]
    vectors = rng.normal(size=(len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return doc, chunks, vectors


def test_write_search_replace_delete(store: PgvectorStore, collection: str) -> None:
    rng = np.random.default_rng(0)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    doc, chunks, vectors = _doc("a.md", ["alpha", "beta", "gamma"], store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)

    hits = store.search_dense(collection=collection, query=vectors[1], top_k=2)
    assert hits[0].chunk.text == "beta" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].source == "a.md"
    assert store.document_hash(collection=collection, source="a.md") == doc.content_hash

    doc2, chunks2, vectors2 = _doc("a.md", ["delta"], store, collection, rng)
    store.write_document(collection=collection, document=doc2, chunks=chunks2, embeddings=vectors2)
    texts = {h.chunk.text for h in store.search_dense(collection=collection, query=vectors2[0],
                                                      top_k=10)}
    assert texts == {"delta"}
    [stats] = [s for s in store.stats() if s.name == collection]
    assert (stats.documents, stats.chunks) == (1, 1)

    assert store.delete_document(collection=collection, source="a.md")
    assert not store.delete_document(collection=collection, source="a.md")
    assert store.search_dense(collection=collection, query=vectors2[0], top_k=5) == []


def test_binary_rescore_agrees_with_float_search(store: PgvectorStore, collection: str) -> None:
    rng = np.random.default_rng(1)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    texts = [f"chunk {i}" for i in range(200)]
    doc, chunks, vectors = _doc("many.md", texts, store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    for q in vectors[:10]:
        exact = store.search_dense(collection=collection, query=q, top_k=5)
        binary = store.search_dense(collection=collection, query=q, top_k=5,
                                    mode="binary-rescore", oversample=40)
        assert binary[0].chunk.id == exact[0].chunk.id
        assert len({h.chunk.id for h in binary} & {h.chunk.id for h in exact}) >= 4


def test_collection_remembers_its_model(store: PgvectorStore, collection: str) -> None:
    store.ensure_collection(collection, embed_model="m1", embed_dim=DIM)
    with pytest.raises(ConfigError, match="m1"):
        store.ensure_collection(collection, embed_model="m2", embed_dim=DIM)
    with pytest.raises(ConfigError, match="-d"):
        store.search_dense(collection=collection, query=np.ones(DIM + 1, np.float32), top_k=1)


def test_unknown_collection_is_not_found(store: PgvectorStore) -> None:
    with pytest.raises(NotFoundError):
        store.search_dense(collection="never-made", query=np.ones(DIM, np.float32), top_k=1)


def test_tenants_do_not_see_each_other(store: PgvectorStore, database, collection: str) -> None:
    rng = np.random.default_rng(2)
    other = PgvectorStore(database, tenant="other")
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    doc, chunks, vectors = _doc("secret.md", ["s"], store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    with pytest.raises(NotFoundError):
        other.search_dense(collection=collection, query=vectors[0], top_k=1)
    assert collection not in {s.name for s in other.stats()}


def test_bm25_ranks_by_term_rarity_and_frequency(store: PgvectorStore, collection: str) -> None:
    rng = np.random.default_rng(3)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    texts = ["the cat sat on the mat", "dogs chase cats in the park", "quantum chromodynamics",
             "cats cats cats everywhere", "a report on the weather"]
    doc, chunks, vectors = _doc("zoo.md", texts, store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    hits = store.search_lexical(collection=collection, query="Cats!", top_k=10)
    assert [h.chunk.text for h in hits][0] == "cats cats cats everywhere"
    assert {h.chunk.text for h in hits} == {texts[0], texts[1], texts[3]}
    assert hits[0].scores["bm25"] > hits[-1].scores["bm25"] > 0
    top = store.search_lexical(collection=collection, query="chromodynamics of quanta", top_k=1)
    assert top[0].chunk.text == "quantum chromodynamics"
    assert store.search_lexical(collection=collection, query="the of and", top_k=5) == []
    store.delete_document(collection=collection, source="zoo.md")
    assert store.search_lexical(collection=collection, query="cats", top_k=5) == []
