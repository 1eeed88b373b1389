"""The deadman's proof of a commissioning run (`treadguard commission`): the drive's own
communication time-out must stop the belt while its link is cut. The proof reads the drive's
first status once the link is back; a belt still moving then is a drive that did not stop by
itself, whatever treadguard's own latched stop does with it afterwards (docs/commissioning.md,
H-43)."""

from __future__ import annotations

import dataclasses

from tests.daemon_process import ROOT
from treadguard.config.loading import LoadedConfig, load_config
from treadguard.controller.commission import ProofStep, SimulatedMachine, run_simulated
from treadguard.controller.journal import CommissioningOutcome
from treadguard.simulator.virtual_loop import VirtualLoop

SIM = ROOT / "config" / "sim.toml"
RUNS_ON_S = 1.5  # how long the technician watches the belt run on before plugging back


class NoDeadmanMachine(SimulatedMachine):
    """The simulated treadmill with a drive whose communication time-out was never set: cut
    off, its belt runs on. The technician, seeing it still run, plugs the cable back in, and
    confirms once the belt stands still (stopped by treadguard's latched stop by then)."""

    def __init__(self, loaded: LoadedConfig, loop: VirtualLoop) -> None:
        super().__init__(loaded, loop)
        belt = self.rig.belt
        belt.params = dataclasses.replace(belt.params, deadman_s=1e9)
        self.speed_at_plug: float | None = None

    def _restore_at_standstill(self) -> float:
        belt = self.rig.belt
        self.loop.run_until(self.loop.time() + RUNS_ON_S)
        belt.advance(self.loop.time())
        self.speed_at_plug = belt.speed_mph
        self.rig.plug()
        give_up = self.loop.time() + 15.0
        while belt.moving() and self.loop.time() < give_up:
            self.loop.run_until(self.loop.time() + 0.05)
            belt.advance(self.loop.time())
        return self.loop.time()


def test_a_drive_without_a_deadman_fails_its_proof_even_if_treadguard_stops_the_belt() -> None:
    loaded = load_config(SIM)
    machines: list[NoDeadmanMachine] = []

    def machine(loaded: LoadedConfig, loop: VirtualLoop) -> NoDeadmanMachine:
        machines.append(NoDeadmanMachine(loaded, loop))
        return machines[-1]

    result = run_simulated(loaded, None, machine=machine)
    (rig,) = machines
    assert rig.speed_at_plug is not None
    assert rig.speed_at_plug > 0.5
    assert rig.rig.belt.deadman_trips == 0
    assert result.outcome is CommissioningOutcome.FAILED, result
    (deadman,) = [p for p in result.proofs if p.step == ProofStep.DEADMAN.value]
    assert not deadman.passed
    assert "still moving" in deadman.detail, deadman
    assert "communication time-out did not stop it" in deadman.detail
    assert result.proofs[-1] is deadman  # the run ends there: no proof after it


def test_a_drive_whose_deadman_stops_the_belt_passes_its_proof() -> None:
    result = run_simulated(load_config(SIM), None)
    assert result.passed, result
    (deadman,) = [p for p in result.proofs if p.step == ProofStep.DEADMAN.value]
    assert deadman.passed
    assert deadman.standstill_s is not None
