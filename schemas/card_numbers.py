"""How a card number is shown wherever it is not needed in full (letters, mail, logs)."""

from __future__ import annotations


def mask_card_number(card_number: str) -> str:
    """The card number with every letter and digit but the last four shown as "•"."""
    keep = 4
    visible = sum(ch.isalnum() for ch in card_number)
    out = []
    for ch in card_number:
        if ch.isalnum():
            out.append(ch if visible <= keep else "•")
            visible -= 1
        else:
            out.append(ch)
    return "".join(out)
