"""Secrets are sealed at rest, bound to their row, and never print themselves."""

from __future__ import annotations

import pytest
import structlog

from db.secrets import SealedValueError, Secret, SecretBox, context, random_digits
from ops.logging import redact_secrets


def test_a_sealed_pin_opens_only_in_its_own_context(box: SecretBox):
    sealed = box.seal("123456", context=context("credential", 1, "pin"))
    assert "123456" not in sealed
    assert box.open(sealed, context=context("credential", 1, "pin")).reveal() == "123456"
    with pytest.raises(SealedValueError) as err:
        box.open(sealed, context=context("credential", 2, "pin"))
    assert "123456" not in str(err.value)


def test_a_value_sealed_under_another_master_key_does_not_open(box: SecretBox):
    other = SecretBox(b"\x01" * 32)
    sealed = other.seal("98765432", context="credential:1:puk")
    with pytest.raises(SealedValueError):
        box.open(sealed, context="credential:1:puk")


def test_a_secret_never_shows_its_value_in_repr_str_or_fstrings():
    pin = Secret("424242")
    assert "424242" not in repr(pin)
    assert "424242" not in str(pin)
    assert "424242" not in f"{pin} {pin!r}"
    assert "424242" not in repr([pin, {"pin": pin}])


def test_random_digits_have_the_asked_length_and_only_digits():
    values = {random_digits(8).reveal() for _ in range(200)}
    assert all(len(v) == 8 and v.isdigit() for v in values)
    assert len(values) > 190  # not a constant


def test_the_log_chain_redacts_values_logged_under_secret_names():
    processors = [redact_secrets, structlog.testing.LogCapture()]
    capture = processors[-1]
    structlog.configure(processors=processors)
    try:
        structlog.get_logger().info(
            "oops",
            pin="123456",
            new_pin="654321",
            so_pin="1",
            p12_password="hunter2",
            card_number="8999",
        )
    finally:
        structlog.reset_defaults()
    event = capture.entries[0]
    assert {event["pin"], event["new_pin"], event["so_pin"], event["p12_password"]} == {"****"}
    assert event["card_number"] == "8999"
