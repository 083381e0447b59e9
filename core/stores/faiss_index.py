"""An in-memory FAISS accelerator for a collection: binary candidates, int8 rescoring.

PostgreSQL stays the source of truth. A :class:`FaissIndex` is built from a
collection's ``halfvec`` embeddings and holds:

- a FAISS binary index over the packed sign bits (sentence-transformers ``ubinary``,
  the same rule as the ``embedding_bin`` column): ``IndexBinaryFlat`` (exhaustive
  Hamming scan), or ``IndexBinaryHNSW`` from ``hnsw_threshold`` chunks up;
- int8 codes (sentence-transformers int8 quantization) with the calibration ranges
  from :func:`core.quantize.int8_ranges`, for rescoring;
- the chunk ids, in index row order.

A search takes the ``top_k x oversample`` nearest codes by Hamming distance, rescores
them by int8 dot products with the float query and returns the best ``top_k``;
optionally the best ``top_k x float_shortlist`` by int8 are rescored with their float
(``halfvec``) vectors read from Postgres, for exact scores and a little more recall.
Building, searching and rescoring are separate functions below.

On disk, under ``DATA_DIR/faiss/<tenant>/<collection>/``::

    binary.faiss     the FAISS binary index (loaded into memory)
    int8.npy         int8 codes, (n, dim)      (memory-mapped: read for candidates only)
    ranges.npy       int8 calibration ranges, (2, dim)
    chunk_ids.npy    chunk ids, fixed-width UTF-8 (memory-mapped)
    manifest.json    what Postgres held at build time: chunk count and id checksum

:class:`FaissAccelerator` loads the saved index when its manifest still matches
Postgres and rebuilds it otherwise.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psycopg

from core.errors import NotFoundError, StoreError
from core.quantize import int8_affine, int8_ranges, quantize_binary, quantize_int8
from core.settings import FaissSettings
from core.stores import pgvector_sql as q
from core.stores.database import Database

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BinaryKind = Literal["flat", "hnsw"]
Rescore = Literal["int8", "float"]

_FILES = ("binary.faiss", "int8.npy", "ranges.npy", "chunk_ids.npy")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_QUANTIZE_BLOCK = 65_536


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the FAISS accelerator needs the faiss package: pip install faiss-cpu "
            "(or reinstall Verity with its dependencies: pip install -e .)"
        ) from e
    return faiss


# --- Pure functions: build, search, rescore --------------------------------------------


def build_binary_index(bits: np.ndarray, *, hnsw_threshold: int, hnsw_m: int = 16) -> Any:
    """A FAISS binary index over packed sign bits (rows of :func:`quantize_binary`).

    Args:
        bits: ``(n, nbytes)`` uint8 codes; padding bits past the dimension are 0 for
            every row, so they never change a Hamming distance.
        hnsw_threshold: from this many rows up, an ``IndexBinaryHNSW``; below, an
            exhaustive ``IndexBinaryFlat``.
        hnsw_m: HNSW graph degree.

    Returns:
        The filled FAISS index.
    """
    faiss = _faiss()
    if bits.ndim != 2 or bits.dtype != np.uint8:
        raise ValueError(f"expected (n, nbytes) uint8 codes, got {bits.dtype} {bits.shape}")
    nbits = bits.shape[1] * 8
    if len(bits) >= hnsw_threshold:
        index = faiss.IndexBinaryHNSW(nbits, hnsw_m)
    else:
        index = faiss.IndexBinaryFlat(nbits)
    if len(bits):
        index.add(np.ascontiguousarray(bits))
    return index


def binary_kind(index: Any) -> BinaryKind:
    """``hnsw`` or ``flat``: which kind of binary index this is."""
    return "hnsw" if hasattr(index, "hnsw") else "flat"


def search_binary(index: Any, query_bits: np.ndarray, *, candidates: int, ef_search: int = 64) -> np.ndarray:
    """Rows of the ``candidates`` codes nearest to one query code by Hamming distance.

    Args:
        index: from :func:`build_binary_index`.
        query_bits: the query's packed sign bits, ``(nbytes,)`` uint8.
        candidates: how many rows to return (fewer if the index is smaller).
        ef_search: HNSW search breadth; raised to ``candidates`` (ignored by flat indexes).

    Returns:
        int64 row numbers, nearest first.
    """
    k = min(candidates, index.ntotal)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if binary_kind(index) == "hnsw":
        index.hnsw.efSearch = max(ef_search, k)
    _, rows = index.search(query_bits.reshape(1, -1), k)
    found: np.ndarray = rows[0]
    return found[found >= 0]


def rescore_int8(
    query: np.ndarray, codes: np.ndarray, rows: np.ndarray, *, ranges: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank candidate rows by the float query's dot product with their int8 codes.

    The codes are mapped back to the centres of their buckets (:func:`int8_affine`),
    so the scores approximate cosine similarities, not just their order.

    Args:
        query: the float query, ``(dim,)``, unit length.
        codes: all int8 codes, ``(n, dim)`` (a memory map is fine: only ``rows`` are read).
        rows: candidate row numbers.
        ranges: the calibration ranges the codes were made with.
        top_k: how many to keep.

    Returns:
        ``(rows, scores)`` of the best ``top_k`` candidates, best first.
    """
    steps, offsets = int8_affine(ranges)
    query = query.astype(np.float32, copy=False)
    rows = np.sort(rows)  # ascending reads are kinder to a memory map
    candidate_codes = np.asarray(codes[rows], dtype=np.float32)
    scores = candidate_codes @ (query * steps) + float(query @ offsets)
    return _best(rows, scores, top_k)


def rescore_float(
    query: np.ndarray, vectors: np.ndarray, rows: np.ndarray, *, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank rows by exact dot product; ``vectors[i]`` is the float vector of ``rows[i]``."""
    scores = vectors.astype(np.float32, copy=False) @ query.astype(np.float32, copy=False)
    return _best(rows, scores, top_k)


def search_exact(vectors: np.ndarray, query: np.ndarray, *, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: exact float32 inner-product search over all ``vectors``."""
    return rescore_float(query, vectors, np.arange(len(vectors)), top_k=top_k)


def _best(rows: np.ndarray, scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(top_k, len(rows))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
    order = part[np.argsort(-scores[part], kind="stable")]
    return rows[order].astype(np.int64), scores[order].astype(np.float32)


def quantize_blocks(vectors: np.ndarray, *, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ubinary bits, int8 codes)`` of ``vectors``, converted a block at a time.

    Converting in blocks keeps the float32 copies small when ``vectors`` is float16.
    """
    n, dim = vectors.shape
    bits = np.empty((n, (dim + 7) // 8), dtype=np.uint8)
    codes = np.empty((n, dim), dtype=np.int8)
    for start in range(0, n, _QUANTIZE_BLOCK):
        block = np.asarray(vectors[start:start + _QUANTIZE_BLOCK], dtype=np.float32)
        bits[start:start + len(block)] = quantize_binary(block)
        codes[start:start + len(block)] = quantize_int8(block, ranges=ranges)
    return bits, codes


# --- The index of one collection ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """What Postgres held when an index was built; a saved index is used only if it still matches."""

    tenant: str
    collection: str
    collection_id: int
    dim: int
    chunk_count: int
    checksum: str
    version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class Hit:
    """A chunk id and its score (int8-approximate or exact cosine similarity)."""

    chunk_id: str
    score: float


class FaissIndex:
    """Binary FAISS index + int8 codes + chunk ids of one collection.

    Example:
        >>> index = FaissIndex.from_vectors(vectors, chunk_ids=ids, manifest=manifest,
        ...                                 hnsw_threshold=2_000_000)
        >>> index.save(path)
        >>> index = FaissIndex.load(path)
        >>> index.search(query, top_k=5, oversample=20)
        [Hit(chunk_id='...', score=0.83), ...]
    """

    def __init__(self, *, binary: Any, codes: np.ndarray, ranges: np.ndarray, chunk_ids: np.ndarray,
                 manifest: Manifest) -> None:
        if not binary.ntotal == len(codes) == len(chunk_ids) == manifest.chunk_count:
            raise ValueError(
                f"index parts disagree: {binary.ntotal} binary codes, {len(codes)} int8 codes, "
                f"{len(chunk_ids)} ids, manifest {manifest.chunk_count}; rebuild the index"
            )
        self.binary = binary
        self.codes = codes
        self.ranges = ranges
        self.chunk_ids = chunk_ids
        self.manifest = manifest

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, *, chunk_ids: Sequence[str], manifest: Manifest,
                     hnsw_threshold: int, hnsw_m: int = 16) -> FaissIndex:
        """Quantize float vectors (unit length, float16 or float32) and build the index.

        The int8 calibration ranges are computed from these vectors and kept with the index.
        """
        if vectors.ndim != 2 or vectors.shape[1] != manifest.dim:
            raise ValueError(f"expected vectors of shape (n, {manifest.dim}), got {vectors.shape}")
        empty = np.zeros((2, manifest.dim), dtype=np.float32)
        ranges = int8_ranges(vectors) if len(vectors) else empty
        bits, codes = quantize_blocks(vectors, ranges=ranges)
        binary = build_binary_index(bits, hnsw_threshold=hnsw_threshold, hnsw_m=hnsw_m)
        return cls(binary=binary, codes=codes, ranges=ranges, chunk_ids=_encode_ids(chunk_ids),
                   manifest=manifest)

    def __len__(self) -> int:
        return int(self.binary.ntotal)

    @property
    def kind(self) -> BinaryKind:
        return binary_kind(self.binary)

    def ram_bytes(self) -> int:
        """Bytes the binary index takes in memory (codes, plus the graph for HNSW)."""
        return int(_faiss().serialize_index_binary(self.binary).nbytes)

    def shortlist(self, query: np.ndarray, *, candidates: int, keep: int, ef_search: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, int8 scores)`` of the best ``keep`` among ``candidates`` binary neighbours.

        Raises:
            ValueError: the query has the wrong dimension.
        """
        self._check_query(query)
        bits = quantize_binary(query.reshape(1, -1).astype(np.float32))[0]
        rows = search_binary(self.binary, bits, candidates=candidates, ef_search=ef_search)
        prefetch_rows(self.codes, rows)
        return rescore_int8(query, self.codes, rows, ranges=self.ranges, top_k=keep)

    def search(self, query: np.ndarray, *, top_k: int, oversample: int, ef_search: int = 64) -> list[Hit]:
        """The ``top_k`` chunks by int8-rescored similarity, best first.

        Args:
            query: the float query embedding, ``(dim,)``, unit length.
            top_k: how many hits.
            oversample: binary candidates per hit (``top_k * oversample`` are rescored).
            ef_search: HNSW search breadth (raised to the candidate count).

        Raises:
            ValueError: the query has the wrong dimension.
        """
        rows, scores = self.shortlist(query, candidates=top_k * oversample, keep=top_k,
                                      ef_search=ef_search)
        return [Hit(chunk_id, float(s)) for chunk_id, s in zip(self.ids(rows), scores, strict=True)]

    def ids(self, rows: np.ndarray) -> list[str]:
        """The chunk ids of index rows."""
        prefetch_rows(self.chunk_ids, rows)
        return [bytes(raw).decode() for raw in self.chunk_ids[rows]]

    def all_ids(self) -> list[str]:
        return self.ids(np.arange(len(self)))

    def save(self, directory: Path) -> None:
        """Write the index files and then the manifest, each atomically.

        The old manifest is removed first, so a crash half-way leaves no manifest and
        the next load rebuilds instead of pairing old files with new ones.
        """
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").unlink(missing_ok=True)
        _atomic(directory / "binary.faiss", lambda p: _faiss().write_index_binary(self.binary, str(p)))
        _atomic(directory / "int8.npy", lambda p: _save_npy(p, self.codes))
        _atomic(directory / "ranges.npy", lambda p: _save_npy(p, self.ranges))
        _atomic(directory / "chunk_ids.npy", lambda p: _save_npy(p, self.chunk_ids))
        body = json.dumps({**asdict(self.manifest), "binary_index": self.kind}, indent=2)
        _atomic(directory / "manifest.json", lambda p: p.write_text(body, encoding="utf-8"))

    @classmethod
    def load(cls, directory: Path) -> FaissIndex | None:
        """The saved index, or None if it is missing, incomplete or of another format.

        The binary index is read into memory; int8 codes and ids are memory-mapped.
        """
        manifest = read_saved_manifest(directory)
        if manifest is None or not all((directory / f).is_file() for f in _FILES):
            return None
        try:
            return cls(
                binary=_faiss().read_index_binary(str(directory / "binary.faiss")),
                codes=map_npy(directory / "int8.npy"),
                ranges=np.load(directory / "ranges.npy"),
                chunk_ids=map_npy(directory / "chunk_ids.npy"),
                manifest=manifest,
            )
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("ignoring the FAISS index in %s (%s); it will be rebuilt", directory, e)
            return None

    def _check_query(self, query: np.ndarray) -> None:
        if query.shape != (self.manifest.dim,):
            raise ValueError(
                f"query embedding has shape {query.shape}; collection "
                f"{self.manifest.collection!r} is {self.manifest.dim}-d: query with the model "
                "the collection was built with"
            )


def read_saved_manifest(directory: Path) -> Manifest | None:
    """The manifest saved in ``directory``, or None if absent, unreadable or of another format."""
    try:
        raw = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        raw.pop("binary_index", None)
        manifest = Manifest(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return manifest if manifest.version == FORMAT_VERSION else None


def map_npy(path: Path) -> np.ndarray:
    """A read-only memory map of a ``.npy`` file, advised for random access.

    Searches read scattered rows; without the advice every page fault also reads ahead
    up to 128 KiB around the row, which makes searches with a cold page cache far slower.
    """
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{path} has .npy format {version}; expected 1.0 or 2.0")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{path} is not a C-ordered array of plain values")
        if not shape or 0 in shape:
            return np.zeros(shape, dtype=dtype)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.ndarray(shape, dtype=dtype, buffer=mapped, offset=offset)


def prefetch_rows(array: np.ndarray, rows: np.ndarray) -> None:
    """Start reading the pages of some rows of a :func:`map_npy` array, all at once.

    With a cold page cache, touching rows one by one waits for one disk read after
    another; asking for all of them first lets the reads run in parallel (at a million
    rows, 800 candidates: about 11 ms instead of 70-330 ms). Costs about 0.5 us a row
    when the pages are already cached. Does nothing for arrays that are not mapped.
    """
    mapped = array.base
    if not isinstance(mapped, mmap.mmap) or len(rows) == 0 or not hasattr(mmap, "MADV_WILLNEED"):
        return
    offset = len(mapped) - array.nbytes  # a .npy file's data runs to its end
    row_bytes = array.strides[0]
    starts = (offset + rows * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
    ends = offset + (rows + 1) * row_bytes
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        mapped.madvise(mmap.MADV_WILLNEED, start, end - start)


def _encode_ids(chunk_ids: Sequence[str]) -> np.ndarray:
    encoded = [c.encode() for c in chunk_ids]
    width = max((len(c) for c in encoded), default=1)
    return np.array(encoded, dtype=f"S{width}")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, np.ascontiguousarray(array))


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- Postgres: manifests, streaming, float rescoring -------------------------------------


def index_dir(data_dir: Path, *, tenant: str, collection: str) -> Path:
    """``DATA_DIR/faiss/<tenant>/<collection>``.

    Raises:
        ValueError: a name that is not safe as a directory name.
    """
    for name in (tenant, collection):
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} cannot name an index directory: use letters, digits, '.', '_', '-'")
    return data_dir / "faiss" / tenant / collection


def _collection(conn: psycopg.Connection[Any], *, tenant: str, name: str) -> tuple[int, int]:
    row = conn.execute(q.GET_COLLECTION, {"tenant": tenant, "name": name}).fetchone()
    if row is None:
        raise NotFoundError(f"collection {name!r} does not exist; ingest documents into it first")
    return int(row[0]), int(row[2])


def current_manifest(conn: psycopg.Connection[Any], *, tenant: str, collection: str) -> Manifest:
    """What an up-to-date index of the collection must record, read from Postgres now.

    Raises:
        NotFoundError: no such collection.
    """
    cid, dim = _collection(conn, tenant=tenant, name=collection)
    row = conn.execute(q.FAISS_MANIFEST, {"collection_id": cid}).fetchone()
    assert row is not None  # an aggregate always returns a row
    return Manifest(tenant=tenant, collection=collection, collection_id=cid, dim=dim,
                    chunk_count=int(row[0]), checksum=str(row[1]))


def stream_embeddings(conn: psycopg.Connection[Any], *, collection_id: int, batch_size: int
                      ) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(chunk ids, float16 vectors)`` batches of a collection, through a server-side cursor.

    Must run inside a transaction (server-side cursors live in one).
    """
    with conn.cursor(name="faiss_stream", binary=True) as cur:
        cur.itersize = batch_size
        cur.execute(q.STREAM_EMBEDDINGS, {"collection_id": collection_id})
        while rows := cur.fetchmany(batch_size):
            yield [str(r[0]) for r in rows], np.stack([r[1].to_numpy() for r in rows])


def read_collection(db: Database, *, tenant: str, collection: str, batch_size: int
                    ) -> tuple[Manifest, list[str], np.ndarray]:
    """Manifest, chunk ids and float16 vectors of a collection, from one consistent snapshot.

    Raises:
        NotFoundError: no such collection.
        StoreError: the database failed.
    """
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    try:
        with db.pool.connection() as conn, conn.transaction():
            conn.execute(q.SNAPSHOT)
            manifest = current_manifest(conn, tenant=tenant, collection=collection)
            for batch_ids, vectors in stream_embeddings(conn, collection_id=manifest.collection_id,
                                                        batch_size=batch_size):
                ids.extend(batch_ids)
                blocks.append(vectors)
    except psycopg.Error as e:
        raise StoreError(f"could not read collection {collection!r} for the FAISS index: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                         ) from e
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, manifest.dim), dtype=np.float16)
    return manifest, ids, vectors


def fetch_vectors(db: Database, *, collection_id: int, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The float (``halfvec``) vectors of some chunks, by id."""
    with db.pool.connection() as conn:
        rows = conn.execute(q.FETCH_EMBEDDINGS, {"collection_id": collection_id,
                                                 "ids": list(chunk_ids)}).fetchall()
    return {str(r[0]): r[1].to_numpy().astype(np.float32) for r in rows}


class FaissAccelerator:
    """Per-collection FAISS indexes of one tenant, kept in step with Postgres.

    Example:
        >>> acc = FaissAccelerator(db, data_dir=settings.data_dir, settings=settings.faiss)
        >>> acc.reindex("docs")            # rebuild from Postgres and save
        >>> acc.search("docs", query=vector, top_k=5, oversample=20)
    """

    def __init__(self, db: Database, *, data_dir: Path, settings: FaissSettings,
                 tenant: str = "default") -> None:
        self._db = db
        self._data_dir = data_dir
        self._settings = settings
        self.tenant = tenant
        self._loaded: dict[str, FaissIndex] = {}
        self._lock = threading.Lock()

    def directory(self, collection: str) -> Path:
        return index_dir(self._data_dir, tenant=self.tenant, collection=collection)

    def manifest(self, collection: str) -> Manifest:
        """What Postgres holds for the collection now.

        Raises:
            NotFoundError: no such collection.
        """
        with self._db.pool.connection() as conn:
            return current_manifest(conn, tenant=self.tenant, collection=collection)

    def load_or_build(self, collection: str) -> tuple[FaissIndex, bool]:
        """The collection's index and whether it had to be rebuilt.

        The saved index is used when its manifest matches Postgres (same chunk count and
        id checksum); otherwise the index is rebuilt from Postgres and saved.
        """
        saved = FaissIndex.load(self.directory(collection))
        if saved is not None and saved.manifest == self.manifest(collection):
            with self._lock:
                self._loaded[collection] = saved
            return saved, False
        return self.reindex(collection), True

    def get(self, collection: str) -> FaissIndex:
        """The index held in memory, loading (or rebuilding) it on first use."""
        with self._lock:
            index = self._loaded.get(collection)
        return index if index is not None else self.load_or_build(collection)[0]

    def reindex(self, collection: str) -> FaissIndex:
        """Rebuild the collection's index from Postgres, save it and hold it in memory.

        Raises:
            NotFoundError: no such collection.
            StoreError: the database failed.
        """
        manifest, ids, vectors = read_collection(self._db, tenant=self.tenant, collection=collection,
                                                 batch_size=self._settings.stream_batch)
        built = FaissIndex.from_vectors(vectors, chunk_ids=ids, manifest=manifest,
                                        hnsw_threshold=self._settings.hnsw_threshold,
                                        hnsw_m=self._settings.hnsw_m)
        directory = self.directory(collection)
        built.save(directory)
        loaded = FaissIndex.load(directory)  # memory-mapped codes, as a later load has
        index = built if loaded is None else loaded
        with self._lock:
            self._loaded[collection] = index
        log.info("FAISS index of %s/%s: %d chunks (%s)", self.tenant, collection, len(index), index.kind)
        return index

    def search(self, collection: str, *, query: np.ndarray, top_k: int, oversample: int,
               rescore: Rescore = "int8") -> list[Hit]:
        """The ``top_k`` chunks: binary candidates, int8 rescoring, then optionally exact float.

        Args:
            collection: the collection to search.
            query: the float query embedding, unit length.
            top_k: how many hits.
            oversample: binary candidates per hit (``top_k * oversample`` are rescored by int8).
            rescore: ``int8`` (in memory only), or ``float``: the best ``top_k * float_shortlist``
                by int8 are rescored with their ``halfvec`` vectors from Postgres, which gives
                exact scores and recovers what int8 rounding got wrong.

        Raises:
            NotFoundError: no such collection.
            ValueError: the query has the wrong dimension.
        """
        index = self.get(collection)
        if rescore == "int8":
            return index.search(query, top_k=top_k, oversample=oversample,
                                ef_search=self._settings.ef_search)
        rows, _ = index.shortlist(query, candidates=top_k * oversample,
                                  keep=top_k * self._settings.float_shortlist,
                                  ef_search=self._settings.ef_search)
        ids = index.ids(rows)
        vectors = fetch_vectors(self._db, collection_id=index.manifest.collection_id, chunk_ids=ids)
        present = [c for c in ids if c in vectors]  # a chunk deleted since the build is skipped
        if not present:
            return []
        best, scores = rescore_float(query, np.stack([vectors[c] for c in present]),
                                     np.arange(len(present)), top_k=top_k)
        return [Hit(present[r], float(s)) for r, s in zip(best, scores, strict=True)]
