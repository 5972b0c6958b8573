"""Whose name goes into a card's certificates."""

from __future__ import annotations

from db.models import Credential
from workers.ca import Holder


def holder_of(cred: Credential) -> Holder:
    user = cred.user
    if user is None:
        name = f"Temporary card {cred.card_number or cred.id}"
        return Holder(
            common_name=name,
            email=f"temp-{cred.id}@invalid",
            upn=f"temp-{cred.id}",
            organization="Cardline",
        )
    return Holder(
        common_name=user.display_name,
        email=user.email,
        upn=user.upn,
        organization=user.organization,
        org_unit=user.org_unit,
        country=user.country,
    )
