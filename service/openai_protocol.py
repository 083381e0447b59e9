"""Wire models of the OpenAI-compatible endpoints (the subset Verity serves).

A "model" is a collection: ``model="handbook"`` answers from the handbook
collection, so any OpenAI client can use Verity as a grounded model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool

from service.protocol import CitationModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "verity"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


# What question() needs, stated in the schema so that clients (and fuzzers) can see it: at least
# one user message with some non-blank text, as a string or as a text part. Requests without one
# get 400.
_NOT_BLANK = {"type": "string", "pattern": r"\S"}
_USER_TEXT: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"const": "user"},
        "content": {"anyOf": [_NOT_BLANK, {"type": "array", "contains": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": _NOT_BLANK}}}]},
    },
}


class ChatCompletionRequest(BaseModel):
    model: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                       description="the collection to answer from")
    messages: list[ChatMessage] = Field(min_length=1, max_length=100,
                                        json_schema_extra={"contains": _USER_TEXT})
    stream: StrictBool = False
    temperature: float | None = Field(default=None, ge=0, le=2, description="ignored")
    max_tokens: int | None = Field(default=None, ge=1, description="ignored")

    model_config = {"extra": "allow"}

    def question(self) -> str:
        """The last user message is the question."""
        for message in reversed(self.messages):
            if message.role == "user" and message.text().strip():
                return message.text().strip()[:4000]
        return ""


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: Literal["stop"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[CitationModel] = Field(description="Verity: the sources the answer cites")
    verity: dict[str, Any] = Field(description="Verity: status, sources, timings and trace")
