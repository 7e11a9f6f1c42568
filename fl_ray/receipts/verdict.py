"""What ``fl-ray verify`` concludes: the result of a run's audit, or its first failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class VerifyFailure:
    """The first thing that did not check out."""

    round: int | None
    field: str
    file: str  # relative to the run directory (absolute for files outside it)
    message: str

    def __str__(self) -> str:
        where = "run" if self.round is None else f"round {self.round}"
        return f"{where}: field {self.field} in {self.file}: {self.message}"


@dataclass
class VerifyResult:
    """``ok`` with every round checked, or the first ``failure``."""

    ok: bool
    rounds: list[int]
    failure: VerifyFailure | None
    receipt_hashes: dict[int, str]
    notes: list[str] = field(default_factory=list)
    roster_path: Path | None = None

    @property
    def head(self) -> str | None:
        """The last verified receipt's hash (the chain head)."""
        return self.receipt_hashes[max(self.receipt_hashes)] if self.receipt_hashes else None


class VerifyAbort(Exception):
    """Raised inside the verifier to stop at the first failure."""

    def __init__(self, failure: VerifyFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


def abort(round_num: int | None, field_name: str, file: str, message: str) -> VerifyAbort:
    """The exception that stops verification at (round, field, file)."""
    return VerifyAbort(VerifyFailure(round_num, field_name, file, message))
