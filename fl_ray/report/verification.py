"""Receipt verification for the report: it runs the offline verifier, it never trusts a flag.

The verifier is :func:`fl_ray.receipts.verify.verify_run` (issue 3); the report only turns its
result into a per-round status an auditor can read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fl_ray.rundir import RunDir

RECEIPT_FILE = "receipt.json"

# per-round states
VERIFIED, FAILED, UNCHECKED, UNSIGNED = "verified", "failed", "not verified", "unsigned"


@dataclass(frozen=True)
class Verification:
    """What the verifier said about a run, in the report's terms.

    ``state`` is ``"unsigned"`` (no receipt files at all), ``"verified"`` (every receipt checked),
    ``"failed"`` (the verifier rejected the run, see ``failure``) or ``"unavailable"`` (receipts
    exist but the verifier could not run, see ``failure``; nothing is shown as verified).
    """

    state: str
    failure: str | None = None
    failure_round: int | None = None
    round_state: dict[int, str] = field(default_factory=dict)
    receipt_hashes: dict[int, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # the verifier's own remarks (which roster, base model check)

    @property
    def headline(self) -> str:
        if self.state == "unsigned":
            return "unsigned run: no round receipts, nothing to verify"
        if self.state == "verified":
            n = sum(1 for s in self.round_state.values() if s == VERIFIED)
            return f"all {n} receipts verified"
        if self.state == "failed":
            return f"verification FAILED: {self.failure}"
        return f"receipts present but NOT verified: {self.failure}"


def receipt_rounds(run_dir: Path) -> list[int]:
    """Rounds whose directory holds a receipt file."""
    run = RunDir(run_dir)
    return [r for r in run.complete_rounds() if (run.round_dir(r) / RECEIPT_FILE).is_file()]


def verify_for_report(run_dir: Path, roster_path: Path | None) -> Verification:
    """Run the verifier (with merge recomputation) over the whole run and summarise it."""
    rounds = RunDir(run_dir).complete_rounds()
    if not receipt_rounds(run_dir):
        return Verification("unsigned", round_state={r: UNSIGNED for r in rounds})
    try:
        from fl_ray.receipts.verify import verify_run
    except ImportError as err:
        return Verification(
            "unavailable",
            failure=f"the verifier cannot be imported ({err})",
            round_state={r: UNCHECKED for r in rounds},
        )
    try:
        result = verify_run(run_dir, roster_path=roster_path, recompute=True)
    except Exception as err:  # a verifier that cannot run has verified nothing; say why
        return Verification(
            "unavailable",
            failure=f"the verifier stopped: {type(err).__name__}: {err}",
            round_state={r: UNCHECKED for r in rounds},
        )
    failure_round = getattr(result.failure, "round", None) if result.failure else None
    checked = set(result.rounds)
    round_state = {}
    for r in rounds:
        if r == failure_round:
            round_state[r] = FAILED
        elif r in checked and (result.ok or failure_round is None or r < failure_round):
            round_state[r] = VERIFIED
        else:
            round_state[r] = UNCHECKED
    return Verification(
        "verified" if result.ok else "failed",
        failure=None if result.ok else str(result.failure),
        failure_round=failure_round,
        round_state=round_state,
        receipt_hashes=dict(result.receipt_hashes),
        notes=tuple(getattr(result, "notes", ())),
    )
