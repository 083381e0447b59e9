"""Hostile uploads: zip bombs, deeply nested HTML, broken PDFs, huge lines, NUL bytes, wrong
extensions, empty files and file names that try to leave the job's folder.

The corpus is generated here (a zip bomb is small to build and large to unpack, so it is
not checked in). Every file must end as a stored document or a one-line per-file
failure; the job, the worker and the service stay up, and the good file is searchable.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ingest.worker import IngestWorker
from service.app import create_app
from tests.helpers import make_docx, make_pdf, replace_zip_member
from verity.answering.runtime import Runtime
from verity.core.settings import WorkerSettings

pytestmark = pytest.mark.integration

GOOD = b"The fire assembly point for building C is the north car park."
BOMB_BYTES = 300_000_000


def _zip_bomb() -> bytes:
    """A .docx whose document part unpacks to 300 MB of one repeated paragraph (~300 kB)."""
    docx = make_docx([("Normal", "x")])
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(docx)) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info, src.read(info))
                continue
            with dst.open("word/document.xml", "w", force_zip64=True) as part:
                xml = src.read(info)
                head, tail = xml.split(b"</w:body>")
                part.write(head)
                block = b"<w:p><w:r><w:t>" + b"A" * 1_000_000 + b"</w:t></w:r></w:p>"
                for _ in range(BOMB_BYTES // len(block)):
                    part.write(block)
                part.write(b"</w:body>" + tail)
    return out.getvalue()


def _broken_xref_pdf() -> bytes:
    pdf = make_pdf(["The printer on floor 2 takes A3 paper."])
    start = pdf.rindex(b"xref")
    return pdf[:start] + b"xref\n0 9\nthis is not a cross-reference table\n" + \
        pdf[pdf.rindex(b"trailer"):]


def corpus() -> dict[str, bytes]:
    return {
        "good.md": GOOD,
        "bomb.docx": _zip_bomb(),
        "missing-part.pptx": replace_zip_member(make_docx([("Normal", "x")]), "word/document.xml",
                                                None),
        "nested.html": b"<html><body>" + b"<div>" * 50_000 + b"deep" + b"</div>" * 50_000
                       + b"</body></html>",
        "broken-xref.pdf": _broken_xref_pdf(),
        "huge-line.txt": b"word" * 10_000,
        "nul.txt": b"The visitor badge\x00 desk\x00 is on the ground floor.",
        "not-a-pdf.pdf": b"Plain text pretending to be a PDF.",
        "empty.md": b"",
        "../../escape.md": b"The spare umbrella stand is by the back door.",
        "/etc/absolute.md": b"The recycling bins are emptied on Fridays.",
        "r\u00e9sum\u00e9\u202e\u0000.md": b"The quiet room is on floor 5.",
        "binary.md": bytes(range(256)) * 64,
    }


@pytest.fixture(scope="module")
def client(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    settings = retrieval_runtime.settings.model_copy(update={
        "server": retrieval_runtime.settings.server.model_copy(update={"auth": False})})
    with TestClient(create_app(settings, runtime=replace(retrieval_runtime,
                                                         settings=settings))) as c:
        yield c


def test_every_hostile_file_ends_as_a_document_or_a_one_line_failure(
    client: TestClient, retrieval_runtime: Runtime, collection: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the worker's job folders go here
    files = corpus()
    r = client.post("/v1/documents", data={"collection": collection},
                    files=[("files", (name, data)) for name, data in files.items()])
    assert r.status_code == 202, r.text
    worker = IngestWorker(db=retrieval_runtime.db, embedder=retrieval_runtime.embedder,
                          chunking=retrieval_runtime.settings.chunking,
                          settings=WorkerSettings(poll_interval_s=0.1))
    assert worker.run_pending() >= 1
    job = client.get(f"/v1/jobs/{r.json()['job_id']}").json()
    assert job["status"] == "done", job
    assert "Traceback" not in json.dumps(job)
    failed = {f["file"]: f["reason"] for f in job["failures"]}
    stored = {d["source"] for d in client.get(
        "/v1/documents", params={"collection": collection, "limit": 100}).json()["documents"]}
    assert job["progress"]["files_done"] == len(files)
    assert len(failed) + len(stored) == len(files), (failed, stored)
    assert all(reason and "\n" not in reason for reason in failed.values())
    assert "good.md" in stored
    assert "zip bomb" in failed["bomb.docx"]
    assert {"empty.md", "not-a-pdf.pdf", "missing-part.pptx"} <= set(failed)
    # Only the last part of a file name is kept, and nothing was written outside the job's
    # own folder, whatever the names said.
    assert {"escape.md", "absolute.md"} <= stored
    assert not list(tmp_path.parent.glob("escape.md")) and not Path("/etc/absolute.md").exists()
    # The service is up, and the good document answers.
    assert client.get("/healthz").status_code == 200
    hits = client.post("/v1/search", json={"query": "where is the fire assembly point?",
                                           "collection": collection}).json()["results"]
    assert hits[0]["document"] == "good.md"


@pytest.mark.parametrize("body", [b"[" * 400_000 + b"]" * 400_000,
                                  b'{"query": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
                                  b'{"query": "' + b"x" * 2_000_000 + b'"}'],
                         ids=["nested-list", "nested-object", "oversized"])
def test_deeply_nested_or_oversized_json_is_a_4xx_and_the_service_stays_up(
    client: TestClient, body: bytes
) -> None:
    r = client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text[:300]
    assert set(r.json()) == {"error"} and "Traceback" not in r.text
    assert client.get("/healthz").status_code == 200
