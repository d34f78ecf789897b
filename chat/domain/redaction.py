"""Redaction of personal data in stored text (docs/api.md §15, `CHAT_REDACT`): e-mail addresses,
phone numbers and payment card numbers become `[email]`, `[phone]`, `[card]`. Pure: no Django.

What counts, and why:

* **cards**: 13 to 19 digits, optionally grouped by single spaces or dashes, that pass the Luhn
  check. The check is what lets order, invoice and tracking numbers of the same length survive:
  a random digit string passes it one time in ten, a card number always.
* **emails**: `local@domain.tld`, the forms people type (no quoted local parts).
* **phones**: 7 to 15 digits (E.164's limit) grouped by spaces, dashes, dots or an area code in
  parentheses, when they look like a phone number rather than a date, a version or an amount:
  an international number (`+44 20 7946 0958`, `+1-555-123-4567`), a national one with its trunk
  prefix (`020 7946 0958`, `06 12 34 56 78`, `07700900123`), an area code in parentheses
  (`(555) 123-4567`), or North America's 3-3-4 grouping (`555-123-4567`, `555.123.4567`). A bare
  run of digits that starts with neither `+` nor `0` (an order number) is not a phone.

Cards go first, so a card number is never half taken for a phone; then e-mail addresses, so
digits inside one are not either.
"""

import re
from collections.abc import Iterable

EMAILS, PHONES, CARDS = "emails", "phones", "cards"
KINDS = (EMAILS, PHONES, CARDS)
PLACEHOLDERS = {EMAILS: "[email]", PHONES: "[phone]", CARDS: "[card]"}

_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?![\w-])")
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
)
# A candidate: an optional +country code, at most one (area code), then digits and single separators.
_PHONE = re.compile(r"(?=[+(\d])(?<![\w+.-])(?:\+\s?\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d(?:[ .-]?\d)*(?!\w)")
_NANP = re.compile(r"^\d{3}([ .-])\d{3}\1\d{4}$")
_DIGITS = re.compile(r"\D")
_ANY_DIGIT = re.compile(r"\d")


def parse_kinds(value: str | Iterable[str]) -> frozenset[str]:
    """The kinds named by a comma list (`"emails,phones"`) or an iterable; raises ValueError
    naming any unknown one."""
    names = value.split(",") if isinstance(value, str) else list(value)
    kinds = {name.strip().lower() for name in names if name.strip()}
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    return frozenset(kinds)


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn (mod 10) check of card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = _DIGITS.sub("", match.group())
    return PLACEHOLDERS[CARDS] if luhn_valid(digits) else match.group()


def _looks_like_phone(candidate: str) -> bool:
    digits = _DIGITS.sub("", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if candidate.startswith("+"):
        return len(digits) >= 8
    if "(" in candidate:
        return len(digits) >= 10
    if digits.startswith("0"):
        return len(digits) >= 9
    return bool(_NANP.match(candidate))


def _phone(match: re.Match) -> str:
    return PLACEHOLDERS[PHONES] if _looks_like_phone(match.group()) else match.group()


def redact(text: str, kinds: frozenset[str] | set[str]) -> str:
    """`text` with the personal data of `kinds` (see KINDS) replaced by their placeholders."""
    if not kinds or not text:
        return text
    # Cheap tests first: most answers have no "@", many no digit, and a scan costs ~0.1 ms per KB.
    has_digits = _ANY_DIGIT.search(text) is not None
    if CARDS in kinds and has_digits:
        text = _CARD.sub(_card, text)
    if EMAILS in kinds and "@" in text:
        text = _EMAIL.sub(PLACEHOLDERS[EMAILS], text)
    if PHONES in kinds and has_digits:
        text = _PHONE.sub(_phone, text)
    return text
