import pytest

from verity.answering.citations import check_citations

pytestmark = pytest.mark.unit


def test_valid_markers_are_kept_in_first_seen_order() -> None:
    checked = check_citations("Use a DSN [2]. It is optional [1][2].", n_sources=3)
    assert checked.text == "Use a DSN [2]. It is optional [1][2]."
    assert checked.cited == (2, 1)
    assert checked.invalid == ()


def test_out_of_range_markers_are_removed_and_reported() -> None:
    checked = check_citations("Set the DSN [4]. Then restart [0].", n_sources=3)
    assert checked.text == "Set the DSN. Then restart."
    assert checked.cited == ()
    assert checked.invalid == (4, 0)


def test_grouped_markers_keep_only_valid_numbers() -> None:
    checked = check_citations("Both apply [1, 7].", n_sources=2)
    assert checked.text == "Both apply [1]."
    assert checked.cited == (1,)
    assert checked.invalid == (7,)


def test_text_without_markers_is_unchanged() -> None:
    assert check_citations("No sources here.", n_sources=2).text == "No sources here."


def test_attribution_cites_the_supporting_source() -> None:
    from verity.answering.citations import attribute

    sources = ["Set VERITY_STORE__DSN to the connection URL of your PostgreSQL server.",
               "The server listens on port 8000 by default."]
    text = "Set VERITY_STORE__DSN to the PostgreSQL connection URL. The port is 8000 by default."
    assert attribute(text, sources) == (
        "Set VERITY_STORE__DSN to the PostgreSQL connection URL [1]. The port is 8000 by default [2].")


def test_attribution_leaves_unsupported_and_already_cited_sentences() -> None:
    from verity.answering.citations import attribute

    sources = ["Verity stores chunks in PostgreSQL."]
    assert attribute("Refunds take 30 days.", sources) == "Refunds take 30 days."
    assert attribute("Chunks live in PostgreSQL [1].", sources) == "Chunks live in PostgreSQL [1]."
