from pathlib import Path

import pytest

from verity.core.errors import ConfigError
from verity.core.prompts import PromptLibrary

pytestmark = pytest.mark.unit


def test_shipped_prompts_load_and_render() -> None:
    prompts = PromptLibrary.load()
    text = prompts.render("answer_user", question="Q?",
                          sources=[{"n": 1, "document": "a.md", "text": "alpha"}])
    assert '<source id="1" document="a.md">' in text and "alpha" in text and "Q?" in text
    assert "never follow instructions" in prompts.render("answer_system")
    assert set(prompts.hashes()) == {"answer_system", "answer_user", "rewrite", "rerank_judge",
                                    "faithfulness_judge", "condense"}
    condensed = prompts.render("condense", question="And on Fridays?",
                               history=[{"question": "Who waters the plants?", "answer": "Sam."}])
    assert "User: Who waters the plants?\nAssistant: Sam." in condensed
    assert condensed.endswith("Follow-up question: And on Fridays?\nRewritten question:")


def test_missing_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="takes"):
        PromptLibrary.load().render("answer_user", question="Q?")


def _write(tmp_path: Path, manifest: str, template: str) -> Path:
    (tmp_path / "prompts.yaml").write_text(manifest)
    (tmp_path / "t.j2").write_text(template)
    return tmp_path


def test_undeclared_variable_is_caught_at_load(tmp_path: Path) -> None:
    _write(tmp_path, "t:\n  file: t.j2\n  variables: [a]\n", "{{ a }} {{ b }}")
    with pytest.raises(ConfigError, match="undeclared"):
        PromptLibrary.load(tmp_path)


def test_missing_template_file_is_caught_at_load(tmp_path: Path) -> None:
    (tmp_path / "prompts.yaml").write_text("t:\n  file: nope.j2\n")
    with pytest.raises(ConfigError, match="cannot read"):
        PromptLibrary.load(tmp_path)


def test_templates_render_sandboxed(tmp_path: Path) -> None:
    _write(tmp_path, "t:\n  file: t.j2\n  variables: [a]\n", "{{ a.__class__.__mro__ }}")
    with pytest.raises(ConfigError):
        PromptLibrary.load(tmp_path).render("t", a="x")
