"""PostgreSQL stopped and started again under a mixed load: searches, answers (whole and
streamed) and uploads, with the upload worker running throughout.

While the database is down every kind of request is refused with 503
``store_unavailable`` and Retry-After (or, begun before, completes); once it is back
every kind succeeds again without a restart, the worker finishes every accepted
upload, and no document or chunk is lost or doubled: the collection that was there
keeps its rows, and the uploads hold exactly the rows of a clean run of the same files.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ingest.worker import IngestWorker
from service.app import create_app
from tests.conftest import make_settings
from tests.helpers import (
    ingest_texts,
    serve_app,
    sse_events,
    start_embedded_again,
    stop_embedded,
)
from verity.answering.runtime import Runtime
from verity.backends.embedders import LocalEmbedder, build_embedder
from verity.backends.generators import OpenAIChatGenerator
from verity.backends.stores.database import Database
from verity.backends.stores.jobs import JobQueue
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.prompts import PromptLibrary
from verity.core.settings import (
    ChunkingSettings,
    EmbedderSettings,
    LLMSettings,
    WorkerSettings,
)
from verity.core.types import UploadedFile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTES = {f"note-{i}.md": f"Note {i}: the {w} shelf holds the {w} binders of team {i}."
         for i, w in enumerate(["red", "blue", "green", "grey", "white", "black"])}
QUESTION = "Which shelf holds the blue binders?"
ANSWER = "The blue shelf holds them [1]."
KINDS = ("search", "query", "stream", "upload")
OK = {"search": 200, "query": 200, "stream": 200, "upload": 202}
# Each document's source, content hash, chunk count and chunk texts (hashed) in order.
CONTENT = """
SELECT d.source, d.content_hash, d.chunk_count, array_agg(md5(k.text) ORDER BY k.ordinal)
FROM documents d JOIN collections c ON c.id = d.collection_id
JOIN chunks k ON k.document_id = d.id
WHERE c.name = %s GROUP BY d.id ORDER BY d.source
"""


def _quick_model() -> FastAPI:
    """An OpenAI-compatible chat server that answers at once, whole or streamed."""
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
        if not (await request.json()).get("stream"):
            return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": ANSWER}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": word + " "},
                                "finish_reason": None}]} for word in ANSWER.split()]
        lines = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
        return StreamingResponse(iter(lines), media_type="text/event-stream")

    return app


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    status: int
    error: str = ""  # the error type of a refusal
    retry_after: str | None = None
    last_event: str = ""  # a stream's last event
    answer: str = ""  # an answer's status
    upload: str = ""  # the file an upload sent


@dataclass
class MixedLoad:
    """Clients sending searches, answers, streamed answers and uploads, in turn."""

    url: str
    seen: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, client_no: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                kind = KINDS[(client_no + n) % len(KINDS)]
                self.seen.append(self._send(client, kind, f"upload-{client_no}-{n}.md"))

    def _send(self, client: httpx.Client, kind: str, name: str) -> Outcome:
        started = time.monotonic()
        outcome = Outcome(kind, started, started, 0)
        question = {"question": QUESTION, "collection": "shelves", "crag": False}
        if kind == "stream":
            with client.stream("POST", "/v1/query", json={**question, "stream": True}) as r:
                if r.status_code == 200:
                    events = list(sse_events(r.iter_lines()))
                    outcome.last_event = events[-1][0] if events else ""
                else:
                    r.read()
        elif kind == "upload":
            outcome.upload = name
            r = client.post("/v1/documents", data={"collection": "uploads"},
                            files=[("files", (name, _note(name)))])
        elif kind == "query":
            r = client.post("/v1/query", json=question)
        else:
            r = client.post("/v1/search", json={"query": QUESTION, "collection": "shelves"})
        outcome.ended, outcome.status = time.monotonic(), r.status_code
        if r.status_code >= 400:
            outcome.error = r.json()["error"]["type"]
            outcome.retry_after = r.headers.get("Retry-After")
        elif kind == "query":
            outcome.answer = r.json()["status"]
        return outcome

    def wait_for(self, *, ok: bool, after: float, within_s: float = 60) -> float:
        """Wait until every kind of request ended refused (``ok`` False) or succeeded after ``after``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            done = {o.kind for o in list(self.seen)
                    if o.started > after and (o.status == OK[o.kind]) == ok}
            if done == set(KINDS):
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"not every kind {'succeeded' if ok else 'was refused'} within "
                             f"{within_s}s: {[(o.kind, o.status) for o in self.seen[-20:]]}")


def _note(name: str) -> bytes:
    return f"# {name}\n\nThe {name} binder is kept on the returns trolley.\n".encode()


@contextmanager
def _mixed_load(url: str, *, clients: int) -> Iterator[MixedLoad]:
    load = MixedLoad(url)
    threads = [threading.Thread(target=load.run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        yield load
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)


@pytest.fixture
def worker_embedder(data_dir: Path) -> LocalEmbedder:
    """An embedder of the worker's own, as ``verity serve`` gives its worker thread."""
    e = build_embedder(EmbedderSettings(), data_dir=data_dir)
    e.warm_up()
    return e


def _runtime(db: Database, embedder: LocalEmbedder, tmp_path: Path, model_url: str) -> Runtime:
    settings = make_settings(tmp_path)
    settings = settings.model_copy(update={"server": settings.server.model_copy(
        update={"auth": False, "threads": 4})})
    generator = OpenAIChatGenerator(LLMSettings(model="m", timeout_s=30),
                                    base_url=f"{model_url}/v1")
    return Runtime(settings=settings, db=db, store=PgvectorStore(db), embedder=embedder,
                   prompts=PromptLibrary.load(), generator=generator)


def _content(db: Database, collection: str) -> list[tuple[Any, ...]]:
    with db.pool.connection() as conn:
        return list(conn.execute(CONTENT, (collection,)).fetchall())


def _wait_jobs_ended(db: Database, *, within_s: float = 120) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + within_s
    while True:
        with db.pool.connection() as conn:
            jobs = list(conn.execute("SELECT filenames[1], status, failures, error FROM jobs"
                                     ).fetchall())
        if not {"queued", "running"} & {status for _, status, _, _ in jobs}:
            return jobs
        assert time.monotonic() < deadline, jobs
        time.sleep(0.2)


def _check_outage(load: MixedLoad, *, stopped: float, restarted: float,
                  recovered: float) -> None:
    during = [o for o in load.seen if stopped < o.ended < restarted]
    refused = [o for o in during if o.status != OK[o.kind]]
    assert {o.kind for o in refused} == set(KINDS)
    assert all((o.status, o.error) == (503, "store_unavailable") and o.retry_after
               and int(o.retry_after) > 0 for o in refused), refused
    # What was under way when the database stopped finished whole: no stream broke off.
    assert all(o.last_event == "done" for o in during if o.kind == "stream" and o.status == 200)
    after = [o for o in load.seen if o.started > recovered]
    assert {o.kind for o in after} == set(KINDS)
    assert all(o.status == OK[o.kind] for o in after), [(o.kind, o.status) for o in after]
    assert all(o.last_event == "done" for o in after if o.kind == "stream")
    assert {o.answer for o in after if o.kind == "query"} <= {"answered", "abstained"}


def test_postgres_restarted_under_mixed_load_refuses_with_503_then_recovers_losing_nothing(
    own_database: Database, embedder: LocalEmbedder, worker_embedder: LocalEmbedder,
    tmp_path: Path
) -> None:
    db = own_database
    worker = IngestWorker(db=db, embedder=worker_embedder, chunking=ChunkingSettings(),
                          settings=WorkerSettings(poll_interval_s=0.1))
    with serve_app(_quick_model()) as model_url:
        runtime = _runtime(db, embedder, tmp_path, model_url)
        ingest_texts(runtime, "shelves", NOTES)
        shelves = _content(db, "shelves")
        app = create_app(runtime.settings, runtime=runtime)
        with worker.running():
            with serve_app(app, lifespan="on") as url, _mixed_load(url, clients=4) as load:
                load.wait_for(ok=True, after=0)
                stopped = time.monotonic()
                stop_embedded(db)
                load.wait_for(ok=False, after=stopped)
                start_embedded_again(db)
                restarted = time.monotonic()
                recovered = load.wait_for(ok=True, after=restarted)
                time.sleep(2.0)  # and a while of normal service after
            jobs = _wait_jobs_ended(db)  # the same worker, never restarted, finishes them all
    _check_outage(load, stopped=stopped, restarted=restarted, recovered=recovered)

    accepted = sorted(o.upload for o in load.seen if o.kind == "upload" and o.status == 202)
    # Every accepted upload was ingested, none failed for the outage, none was lost or doubled.
    assert sorted(name for name, _, _, _ in jobs) == accepted
    assert {(status, error) for _, status, _, error in jobs} == {("done", None)}
    assert all(failures == [] for _, _, failures, _ in jobs), jobs
    uploads = _content(db, "uploads")
    assert [source for source, *_ in uploads] == accepted
    # The same files ingested by a clean run make the same rows; the old collection is intact.
    queue = JobQueue(db)
    for name in accepted:
        queue.enqueue(tenant="default", collection="clean", files=[UploadedFile(name, _note(name))])
    assert worker.run_pending() == len(accepted)
    assert uploads == _content(db, "clean")
    assert _content(db, "shelves") == shelves
