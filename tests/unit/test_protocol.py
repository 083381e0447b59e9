"""The wire models accept exactly what their OpenAPI schema declares."""

import math

import pytest
from pydantic import BaseModel, ValidationError

from service.protocol import SearchRequest
from verity.core.types import MetadataCondition

pytestmark = pytest.mark.unit


def test_filters_become_metadata_conditions() -> None:
    request = SearchRequest.model_validate({"query": "q", "filters": {
        "dept": "hr", "draft": False, "lang": {"in": ["en", 2]}, "year": {"gte": 2020},
        "date": {"lt": "2025-01-01"}, "score": {"gt": 0.5}}})
    assert request.conditions() == (
        MetadataCondition("dept", "eq", "hr"), MetadataCondition("draft", "eq", False),
        MetadataCondition("lang", "in", ["en", 2]), MetadataCondition("year", "gte", 2020),
        MetadataCondition("date", "lt", "2025-01-01"), MetadataCondition("score", "gt", 0.5))


@pytest.mark.parametrize(("filters", "message"), [
    ({"year": {"between": [1, 2]}}, "use one of in, gt, gte, lt, lte"),
    ({"year": {"gt": 1, "lt": 2}}, "use one of in, gt, gte, lt, lte"),
    ({"year": {"in": 3}}, "'in' takes a non-empty list"),
    ({"year": {"in": []}}, "'in' takes a non-empty list"),
    ({"year": {"gt": True}}, "ranges take a number or a string"),
    ({"": 1}, "1-100 characters"),
    ({"dept\x00": "hr"}, "NUL"),
    ({"dept": {"in": ["h\x00r"]}}, "NUL"),
    ({"year": math.nan}, "NaN or infinite"),
    ({"year": {"lt": math.inf}}, "NaN or infinite"),
])
def test_filters_outside_the_schema_are_refused_with_a_reason(filters: dict[str, object],
                                                              message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SearchRequest.model_validate({"query": "q", "filters": filters})


def test_filter_schema_spells_out_the_operators() -> None:
    schema = SearchRequest.model_json_schema()
    gt = schema["$defs"]["GtCondition"]
    assert gt["required"] == ["gt"] and gt["additionalProperties"] is False
    assert {"type": "boolean"} not in gt["properties"]["gt"]["anyOf"]
    assert schema["properties"]["filters"]["propertyNames"]["maxLength"] == 100


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, "true", "no"])
def test_switches_take_json_booleans_only(value: object) -> None:
    # The schema says boolean; a lenient parser would take 0.0 as false (the fuzzer sent it).
    from service.openai_protocol import ChatCompletionRequest
    from service.protocol import CreateKeyRequest, QueryRequest, ReindexRequest

    cases: list[tuple[type[BaseModel], dict[str, object]]] = [
                        (QueryRequest, {"question": "q", "crag": value}),
                        (QueryRequest, {"question": "q", "stream": value}),
                        (ReindexRequest, {"re_embed": value}),
                        (CreateKeyRequest, {"name": "k", "admin": value}),
                        (ChatCompletionRequest, {"model": "docs", "stream": value,
                                                 "messages": [{"role": "user", "content": "q"}]})]
    for model, body in cases:
        with pytest.raises(ValidationError):
            model.model_validate(body)
