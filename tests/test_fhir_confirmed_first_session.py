"""``treadguard export --fhir`` of a first session stopped early that a clinician confirmed as
the user's first session (docs/plan.md): the confirmation, which let the user start the later
programs, is in the Bundle with who made it."""

from __future__ import annotations

import json

from tests.test_fhir_export import CLINIC, T0, resources
from treadguard.controller.fhir_export import export_fhir
from treadguard.controller.journal import EventRow, SessionRow


def test_a_clinicians_confirmation_of_a_first_session_is_in_the_export() -> None:
    stopped = SessionRow(3, "ann", "first_session", 180.0, T0, T0 + 70, "operator_stop", 60.0, 0.8)
    events = {
        3: [
            EventRow(
                T0 + 400,
                "first_session_confirmed",
                {"session_id": "3", "user": "ann", "clinician": "c-7"},
            )
        ]
    }
    bundle = json.loads(export_fhir([stopped], events, clinic=CLINIC, user="ann"))
    [procedure] = resources(bundle, "Procedure")
    said = json.dumps(procedure)
    assert "confirmed" in said, said
    assert "c-7" in said, said
