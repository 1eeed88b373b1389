"""``treadguard export --fhir`` of everyone's sessions: the user codes are the only thing that
tells patients apart (docs/fhir.md), so two users the journal keeps apart are two Patients
with two different identifiers, whatever characters their codes hold (a code typed with an
input method's ideographic space, or a no-break space, is another user's code)."""

from __future__ import annotations

import json

from tests.test_fhir_export import CLINIC, T0, resources
from treadguard.controller.fhir_export import export_fhir
from treadguard.controller.journal import SessionRow


def test_users_the_journal_keeps_apart_have_identifiers_that_differ() -> None:
    users = ["p 1", "p\u30001", "p\u00a01"]
    sessions = [
        SessionRow(n, user, "reverse_walking", 300.0, T0 + n, T0 + n + 310, "cap", 300.0, 1.0)
        for n, user in enumerate(users, start=1)
    ]
    bundle = json.loads(export_fhir(sessions, {}, clinic=CLINIC, user=None))
    patients = resources(bundle, "Patient")
    assert len(patients) == 3
    identifiers = {(p["identifier"][0]["system"], p["identifier"][0]["value"]) for p in patients}
    assert len(identifiers) == 3, identifiers
