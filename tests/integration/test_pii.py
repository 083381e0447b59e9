"""Private-data protection with the real store, embedder and local model."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from ingest.pipeline import IngestPipeline
from verity.answering.pipeline import RagPipeline
from verity.answering.runtime import Runtime
from verity.core.protocols import Generation, Generator
from verity.core.settings import ChunkingSettings, PiiSettings
from verity.core.types import Answer, Document, Section

pytestmark = pytest.mark.integration

EMAIL, PHONE = "maria.okafor@acme-hr.example", "+44 20 7946 0958"
HANDBOOK = (f"Questions about parental leave go to the HR contact, Maria Okafor, at {EMAIL} "
            f"or by phone on {PHONE}. Leave requests need four weeks' notice.")


@dataclass
class Recording:
    """The real generator, with every message it was sent kept for the test to read."""

    inner: Generator
    sent: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.inner.model

    def generate(self, messages: Sequence[dict[str, str]], *,
                 max_tokens: int | None = None) -> Generation:
        self.sent += [m["content"] for m in messages]
        return self.inner.generate(messages, max_tokens=max_tokens)

    def stream(self, messages: Sequence[dict[str, str]], *,
               max_tokens: int | None = None) -> Iterator[str]:
        self.sent += [m["content"] for m in messages]
        return self.inner.stream(messages, max_tokens=max_tokens)

    def health(self) -> bool:
        return self.inner.health()


@pytest.fixture(scope="module")
def collection(runtime: Runtime) -> str:
    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=ChunkingSettings())
    doc = Document(source="handbook.md", title="HR handbook", sections=(Section(HANDBOOK),),
                   content_hash="pii-handbook")
    assert pipeline.ingest_documents([doc], collection="pii-hr").ok
    return "pii-hr"


def _rag(runtime: Runtime, recorder: Recording, pii: PiiSettings) -> RagPipeline:
    return RagPipeline(store=runtime.store, embedder=runtime.embedder, generator=recorder,
                       prompts=runtime.prompts, settings=runtime.settings.retrieval, pii=pii)


@pytest.mark.parametrize("stream", [False, True])
def test_model_never_sees_personal_data_and_the_answer_gets_it_back(
    runtime: Runtime, collection: str, stream: bool
) -> None:
    assert runtime.generator is not None
    recorder = Recording(runtime.generator)
    rag = _rag(runtime, recorder, PiiSettings(collections=[collection]))
    question = "What is the email address of the HR contact for parental leave?"
    prepared = rag.prepare(question, collection=collection)
    if stream:
        items = list(rag.stream(prepared))
        answer = items[-1]
        assert isinstance(answer, Answer)
        streamed = "".join(i for i in items if isinstance(i, str))
        assert "<EMAIL_" not in streamed
    else:
        answer = rag.complete(prepared)
    sent = "\n".join(recorder.sent)
    assert EMAIL not in sent and "7946" not in sent and "<EMAIL_1>" in sent
    assert answer.status == "answered", answer
    assert EMAIL in answer.text and "<EMAIL_" not in answer.text
    assert answer.trace["pii_masked"] == 2
    assert answer.sources[0].text == HANDBOOK  # callers see the real sources


def test_collections_without_protection_are_sent_as_they_are(
    runtime: Runtime, collection: str
) -> None:
    assert runtime.generator is not None
    recorder = Recording(runtime.generator)
    rag = _rag(runtime, recorder, PiiSettings(collections=["some-other"]))
    rag.answer("Who is the HR contact?", collection=collection)
    assert EMAIL in "\n".join(recorder.sent)
