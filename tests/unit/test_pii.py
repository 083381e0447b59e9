import pytest

from verity.answering.pii import PiiVault, luhn_valid

pytestmark = pytest.mark.unit

TEXT = ("Contact Ana at ana.lopez@example.com or +44 20 7946 0958. Refunds go to card "
        "4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, account 12345678901. "
        "The office opened in 1987 and has 250 staff.")


def test_personal_data_is_masked_and_restored() -> None:
    vault = PiiVault()
    masked = vault.mask(TEXT)
    for secret in ["ana.lopez@example.com", "7946", "4111", "GB82", "12345678901"]:
        assert secret not in masked, secret
    assert {"<EMAIL_1>", "<PHONE_1>", "<CARD_1>", "<IBAN_1>", "<ACCOUNT_1>"} <= set(
        masked.replace(",", " ").replace(".", " ").split())
    assert "1987" in masked and "250 staff" in masked
    assert vault.unmask(masked) == TEXT
    assert vault.masked == 5


def test_same_value_same_placeholder_across_texts() -> None:
    vault = PiiVault()
    a = vault.mask("Mail bob@corp.io today.")
    b = vault.mask("Again: bob@corp.io and eve@corp.io")
    assert "<EMAIL_1>" in a and b == "Again: <EMAIL_1> and <EMAIL_2>"


def test_numbers_that_fail_luhn_are_not_cards() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert "<CARD" not in PiiVault().mask("order 4111 1111 1111 1112")


def test_streamed_placeholders_are_restored_even_when_split() -> None:
    vault = PiiVault()
    vault.mask("x@y.org")
    deltas = ["Write to <EM", "AIL_", "1> now <", "b>"]
    assert "".join(vault.unmask_stream(deltas)) == "Write to x@y.org now <b>"
