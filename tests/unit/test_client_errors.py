"""How verity.clients.http turns a server's answer into a result or a clear error."""

import httpx
import pytest

from verity.backends.llama_server import free_port
from verity.clients.http import SearchResult, VerityAPIError, VerityClient, VerityConnectionError, _body

pytestmark = pytest.mark.unit


def test_error_schema_is_carried() -> None:
    response = httpx.Response(404, json={"error": {"type": "not_found", "message": "no such collection"}})
    err = VerityAPIError.from_response(response)
    assert (err.status_code, err.type, err.message) == (404, "not_found", "no such collection")
    assert str(err) == "Verity answered 404 not_found: no such collection"


def test_retry_after_is_read_from_429() -> None:
    response = httpx.Response(429, headers={"Retry-After": "7"},
                              json={"error": {"type": "rate_limited", "message": "slow down"}})
    assert VerityAPIError.from_response(response).retry_after_s == 7.0


@pytest.mark.parametrize("body", [b"<html><body>Bad Gateway</body></html>", b"", b'["no"]'])
def test_a_body_that_is_not_the_error_schema_still_gives_a_clear_error(body: bytes) -> None:
    err = VerityAPIError.from_response(httpx.Response(502, content=body))
    assert err.status_code == 502 and err.type == "http_error"
    assert err.message.startswith("Bad Gateway")


def test_unset_options_are_left_to_the_server() -> None:
    body = _body("query", "q", {"collection": "kb", "top_k": None, "filters": {"dept": "hr"}})
    assert body == {"query": "q", "collection": "kb", "filters": {"dept": "hr"}}


def test_search_result_tolerates_fields_it_does_not_know() -> None:
    hit = {"rank": 1, "chunk_id": "c-1", "document": "kb/a.md", "title": "A", "text": "t",
           "heading": None, "page": None, "score": 0.5, "scores": {"bm25": 1.0}, "new_field": 1}
    result = SearchResult.from_json({"results": [hit], "timings": {"total_ms": 3.0}, "extra": True})
    assert result.results[0].metadata() == {
        "document": "kb/a.md", "chunk_id": "c-1", "score": 0.5, "scores": {"bm25": 1.0},
        "heading": "", "page": None, "title": "A"}


def test_an_unreachable_server_is_a_connection_error() -> None:
    with VerityClient(f"http://127.0.0.1:{free_port()}", timeout=5) as verity, \
            pytest.raises(VerityConnectionError, match="cannot reach Verity"):
        verity.search("anything")
