"""The patterns of chat.domain.redaction (CHAT_REDACT, docs/api.md §15), on their own."""

import pytest

from chat.domain.redaction import KINDS, luhn_valid, parse_kinds, redact

ALL = frozenset(KINDS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("write to jane.doe+shop@example.co.uk please", "write to [email] please"),
        ("ME@Mail.Example.ORG.", "[email]."),
        ("a_b-c%d@sub-domain.example.com, and x@y.io", "[email], and [email]"),
    ],
)
def test_emails_become_placeholders(text, expected):
    assert redact(text, {"emails"}) == expected


@pytest.mark.parametrize(
    "text",
    ["user@localhost", "an @mention", "price 5@10", "version 1.2.3", "x@.com"],
)
def test_things_that_are_not_emails_stay(text):
    assert redact(text, {"emails"}) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        # International.
        ("call +44 20 7946 0958 now", "call [phone] now"),
        ("+1-555-123-4567", "[phone]"),
        ("+1 (555) 123-4567", "[phone]"),
        ("+33612345678.", "[phone]."),
        ("+44 (0)20 7946 0958", "[phone]"),
        ("+86 138 0013 8000", "[phone]"),
        # National, with the trunk prefix.
        ("tel 020 7946 0958", "tel [phone]"),
        ("06 12 34 56 78", "[phone]"),
        ("07700900123", "[phone]"),
        ("030-1234567", "[phone]"),
        # An area code in parentheses, and North America's 3-3-4.
        ("(555) 123-4567", "[phone]"),
        ("ring 555-123-4567 or 555.987.6543", "ring [phone] or [phone]"),
    ],
)
def test_phones_in_international_and_local_formats_become_placeholders(text, expected):
    assert redact(text, {"phones"}) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 123456789 shipped",  # a bare number that starts with neither + nor 0
        "on 2024-01-15 at 10.30",  # a date and a time
        "from 192.168.1.1",  # an address
        "version 10.2.33",
        "1,234,567.89 EUR",
        "call 123-4567",  # too short to be sure
        "room 12 and 34",
        "+12 34",  # too few digits
    ],
)
def test_numbers_that_are_not_phones_stay(text):
    assert redact(text, {"phones"}) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("card 4111111111111111 thanks", "card [card] thanks"),
        ("4111 1111 1111 1111", "[card]"),
        ("5500-0000-0000-0004.", "[card]."),
        ("amex 3782 822463 10005", "amex [card]"),
        ("visa 4012888888881881, exp 12/29", "visa [card], exp 12/29"),
    ],
)
def test_card_numbers_with_spaces_or_dashes_become_placeholders(text, expected):
    assert redact(text, {"cards"}) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112",  # one digit off: fails the Luhn check
        "order 1234 5678 9012 3456",
        "tracking 1234-5678-9012-3456-789",
        "invoice 123456789012",  # 12 digits: too short for a card
        "id 41111111111111111111",  # 20 digits: too long
    ],
)
def test_order_numbers_that_fail_the_luhn_check_survive(text):
    assert redact(text, ALL) == text


def test_luhn():
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_only_the_kinds_asked_for_are_redacted():
    text = "mail a@example.com, call +44 20 7946 0958, pay 4111 1111 1111 1111"
    assert redact(text, set()) == text
    assert redact(text, {"emails"}) == "mail [email], call +44 20 7946 0958, pay 4111 1111 1111 1111"
    assert redact(text, {"phones"}) == "mail a@example.com, call [phone], pay 4111 1111 1111 1111"
    assert redact(text, {"cards"}) == "mail a@example.com, call +44 20 7946 0958, pay [card]"
    assert redact(text, ALL) == "mail [email], call [phone], pay [card]"


def test_a_card_is_not_half_taken_for_a_phone_and_email_digits_stay_in_the_email():
    assert redact("pay 0412 1111 1111 1111 now", ALL) == "pay 0412 1111 1111 1111 now"  # no card, no phone
    assert redact("pay 4111 1111 1111 1111 now", ALL) == "pay [card] now"
    assert redact("02079460958@example.com", ALL) == "[email]"


def test_redacting_twice_changes_nothing_more():
    text = "a@example.com +44 20 7946 0958 4111-1111-1111-1111"
    once = redact(text, ALL)
    assert redact(once, ALL) == once


def test_parse_kinds():
    assert parse_kinds("") == frozenset()
    assert parse_kinds(" emails, Cards ,") == {"emails", "cards"}
    assert parse_kinds(["phones"]) == {"phones"}
    with pytest.raises(ValueError, match="unknown names, ssn; choose from emails, phones, cards"):
        parse_kinds("emails,ssn,names")
