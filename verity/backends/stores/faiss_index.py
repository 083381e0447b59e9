"""An in-memory FAISS accelerator for a collection: binary candidates, int8 rescoring.

PostgreSQL stays the source of truth. A :class:`FaissIndex` is built from a
collection's ``halfvec`` embeddings and holds:

- a FAISS binary index over the packed sign bits (sentence-transformers ``ubinary``,
  the same rule as the ``embedding_bin`` column): ``IndexBinaryFlat`` (exhaustive
  Hamming scan), or ``IndexBinaryHNSW`` from ``hnsw_threshold`` chunks up;
- int8 codes (sentence-transformers int8 quantization) with the calibration ranges
  from :func:`verity.backends.quantize.int8_ranges`, for rescoring;
- the chunk ids, in index row order.

A search takes the ``top_k x oversample`` nearest codes by Hamming distance, rescores
them by int8 dot products with the float query and returns the best ``top_k``;
optionally the best ``top_k x float_shortlist`` by int8 are rescored with their float
(``halfvec``) vectors read from Postgres, for exact scores and a little more recall.
Building, searching and rescoring are separate functions in
:mod:`verity.backends.stores.faiss_search`.

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

from verity.backends.quantize import int8_ranges, quantize_binary
from verity.backends.stores import pgvector_sql as q
from verity.backends.stores.database import Database, first_line
from verity.backends.stores.faiss_search import (
    BinaryKind,
    binary_kind,
    build_binary_index,
    load_faiss,
    quantize_blocks,
    rescore_float,
    rescore_int8,
    search_binary,
)
from verity.core.errors import NotFoundError, StoreError
from verity.core.settings import FaissSettings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
Rescore = Literal["int8", "float"]

_FILES = ("binary.faiss", "int8.npy", "ranges.npy", "chunk_ids.npy")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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
        return int(load_faiss().serialize_index_binary(self.binary).nbytes)

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
        _atomic(directory / "binary.faiss", lambda p: load_faiss().write_index_binary(self.binary, str(p)))
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
                binary=load_faiss().read_index_binary(str(directory / "binary.faiss")),
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
    if len(mapped) - offset < int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path} is truncated: its header promises {shape} of {dtype}")
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
        log.warning("could not read collection %r for the FAISS index: %s", collection,
                    first_line(e))
        raise StoreError(f"could not read collection {collection!r} for the FAISS index "
                         f"({type(e).__name__}); the server log has the details") from e
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
        """The index held in memory, loading (or rebuilding) it on first use.

        An index rebuilt but not saved (a read-only or full disk) is used from memory.
        """
        with self._lock:
            index = self._loaded.get(collection)
        if index is not None:
            return index
        try:
            return self.load_or_build(collection)[0]
        except StoreError as e:
            with self._lock:
                index = self._loaded.get(collection)
            if index is None:
                raise
            log.warning("%s; searching the index held in memory meanwhile", e)
            return index

    def reindex(self, collection: str) -> FaissIndex:
        """Rebuild the collection's index from Postgres, hold it in memory and save it.

        Raises:
            NotFoundError: no such collection.
            StoreError: the database failed, or the files could not be written (the
                rebuilt index is held in memory all the same).
        """
        manifest, ids, vectors = read_collection(self._db, tenant=self.tenant, collection=collection,
                                                 batch_size=self._settings.stream_batch)
        built = FaissIndex.from_vectors(vectors, chunk_ids=ids, manifest=manifest,
                                        hnsw_threshold=self._settings.hnsw_threshold,
                                        hnsw_m=self._settings.hnsw_m)
        directory = self.directory(collection)
        with self._lock:
            self._loaded[collection] = built  # searches use it even if it cannot be saved
        try:
            built.save(directory)
        except (OSError, RuntimeError) as e:  # FAISS reports a failed write as RuntimeError
            # A read-only or full disk: Postgres still holds everything.
            reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
            raise StoreError(f"cannot write the FAISS index to {directory} ({reason}); "
                             "free space or make the data directory writable, then run "
                             "`verity reindex`") from e
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
