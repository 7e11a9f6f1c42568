"""Round receipts: one coordinator-signed, hash-chained record per round (docs/receipts.md).

``receipt.json`` is canonical JSON (``hashing.canonical_json``) plus one newline::

    {"format": "fl_ray.receipt.v1",
     "message": {<the EIP-712 RoundReceipt struct, see typed_data.RECEIPT_FIELDS>},
     "signer": "0x<coordinator address>",
     "signature": "0x<65-byte EIP-712 signature of message>",
     "strategy_params": {<the parameters whose hash is message.strategy_params_hash>}}

A receipt's hash is SHA-256 of its file bytes; each receipt's ``prev_receipt`` is the previous
round's receipt hash (round 0: 32 zero bytes), so a chain with a gap, a swap or a duplicate
does not verify.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from fl_ray.receipts.hashing import (
    EMPTY_STATE_HASH,
    ZERO_HASH,
    canonical_json,
    metrics_hash,
    params_hash,
    sha256_hex,
    state_hash,
)
from fl_ray.receipts.typed_data import (
    SignatureError,
    check_message,
    is_hash32,
    recover_typed,
    recover_update_signer,
    sign_typed,
    sign_update,
)

RECEIPT_FORMAT = "fl_ray.receipt.v1"
RECEIPT_FILE = "receipt.json"
STATUSES = ("initial", "ok", "aborted")
_TOP_KEYS = {"format", "message", "signer", "signature", "strategy_params"}


class ReceiptFormatError(ValueError):
    """A receipt file that is not a well-formed, canonical receipt; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Contribution:
    """One silo's accepted update as the receipt lists it."""

    silo: str
    address: str
    update_hash: str
    num_examples: int
    signature: str

    def to_message(self) -> dict[str, Any]:
        return {
            "silo": self.silo,
            "address": self.address,
            "update_hash": self.update_hash,
            "num_examples": self.num_examples,
            "signature": self.signature,
        }


@dataclass(frozen=True)
class SignedUpdate:
    """What a silo attaches to its update: the two hashes it signed and the signature."""

    update_hash: str
    start_global_hash: str
    signature: str


def sign_silo_update(
    account: LocalAccount,
    federation_id: str,
    run_id: str,
    round_num: int,
    silo: str,
    state: Mapping[str, Any],
    num_examples: int,
    start_global_state: Mapping[str, Any],
) -> SignedUpdate:
    """Inside the silo: hash the update and the global adapter it received, sign both (EIP-712)."""
    update_hash = state_hash(state)
    start_hash = state_hash(start_global_state)
    signature = sign_update(
        account, federation_id, run_id, round_num, silo, update_hash, num_examples, start_hash
    )
    return SignedUpdate(update_hash, start_hash, signature)


def check_silo_update(
    federation_id: str,
    run_id: str,
    round_num: int,
    silo: str,
    state: Mapping[str, Any],
    num_examples: int,
    global_hash: str,
    signature: str,
    roster_address: str,
) -> Contribution:
    """At the coordinator: recompute the update's hash and check the silo's signature over it
    and over the global adapter the coordinator sent (``global_hash``). Raises SignatureError
    (one line, usable as the drop reason) when anything differs."""
    update_hash = state_hash(state)
    signer = recover_update_signer(
        federation_id, run_id, round_num, silo, update_hash, num_examples, global_hash, signature
    )
    if signer != roster_address:
        raise SignatureError(
            f"update signature recovers to {signer}, not the roster address {roster_address} "
            "(wrong key, or the update/start adapter differs from what was signed)"
        )
    return Contribution(silo, roster_address, update_hash, num_examples, signature)


def receipt_hash(receipt_bytes: bytes) -> str:
    """A receipt's chain hash: SHA-256 of its exact file bytes."""
    return sha256_hex(receipt_bytes)


def read_receipt_hash(round_dir: str | Path) -> str:
    """The chain hash of ``round_dir/receipt.json`` (what the next round's receipt links to)."""
    return receipt_hash((Path(round_dir) / RECEIPT_FILE).read_bytes())


def encode_receipt(receipt: Mapping[str, Any]) -> bytes:
    return canonical_json(dict(receipt)) + b"\n"


def _as_hash(value: str, what: str) -> str:
    """Accept Recipe.fingerprint()'s bare hex too; always return the 0x form."""
    if isinstance(value, str) and len(value) == 64 and not value.startswith("0x"):
        value = "0x" + value
    if not is_hash32(value):
        raise TypeError(f"{what} must be a sha256 hex digest, got {value!r}")
    return value


class RoundNotary:
    """The coordinator's receipt writer: one signed receipt per round, chained by hash.

    Holds the coordinator's key and the run's constants; per round the caller passes the
    hashes (``hashing.state_hash``), the contributions it accepted and the previous receipt hash.
    """

    def __init__(
        self,
        coordinator_account: LocalAccount,
        federation_id: str,
        run_id: str,
        recipe_sha256: str,
        base_fingerprint: str,
    ) -> None:
        self.account = coordinator_account
        self.federation_id = federation_id
        self.run_id = run_id
        self.recipe_hash = _as_hash(recipe_sha256, "recipe_sha256")
        self.base_fingerprint = _as_hash(base_fingerprint, "base_fingerprint")

    @property
    def address(self) -> str:
        return self.account.address

    def receipt_for_round(
        self,
        round_num: int,
        status: str,
        global_before: str,
        global_after: str,
        strategy_name: str,
        strategy_params: Mapping[str, Any],
        contributions: list[Contribution],
        dropped: Mapping[str, str],
        metrics: Mapping[str, Any],
        prev_receipt_hash: str,
        server_state_after: str = EMPTY_STATE_HASH,
    ) -> bytes:
        """The signed ``receipt.json`` bytes for one round.

        ``metrics`` is the dict the round writes as ``metrics.json`` (its file bytes are hashed);
        ``server_state_after`` is ``state_hash`` of the saved server state ({} when none).
        """
        if status not in STATUSES:
            raise ValueError(f"receipt status must be one of {STATUSES}, got {status!r}")
        if status == "initial" and (contributions or global_before != global_after):
            raise ValueError("an initial receipt has no contributions and an unchanged adapter")
        if not all(isinstance(c, Contribution) for c in contributions):
            raise TypeError("contributions must be Contribution objects")
        params = dict(strategy_params)
        message = {
            "federation": self.federation_id,
            "run_id": self.run_id,
            "round": round_num,
            "status": status,
            "recipe_hash": self.recipe_hash,
            "base_fingerprint": self.base_fingerprint,
            "global_before": global_before,
            "global_after": global_after,
            "server_state_after": server_state_after,
            "strategy": strategy_name,
            "strategy_params_hash": params_hash(params),
            "contributions": [c.to_message() for c in sorted(contributions, key=_by_silo)],
            "dropped": [{"silo": s, "reason": r} for s, r in sorted(dropped.items())],
            "metrics_hash": metrics_hash(metrics),
            "prev_receipt": prev_receipt_hash,
        }
        silos = [c.silo for c in contributions]
        if len(set(silos)) != len(silos) or set(silos) & set(dropped):
            raise ValueError("a silo appears twice among contributions and dropped silos")
        signature = sign_typed(self.account, self.federation_id, "RoundReceipt", message)
        return encode_receipt(
            {
                "format": RECEIPT_FORMAT,
                "message": message,
                "signer": self.account.address,
                "signature": signature,
                "strategy_params": params,
            }
        )

    @staticmethod
    def receipt_hash(receipt_bytes: bytes) -> str:
        return receipt_hash(receipt_bytes)


def _by_silo(c: Contribution) -> str:
    return c.silo


@dataclass(frozen=True)
class ParsedReceipt:
    """A receipt file that is well-formed and canonical (its signature is not yet checked)."""

    message: dict[str, Any]
    signer: str
    signature: str
    strategy_params: dict[str, Any]
    hash: str

    def recover_signer(self) -> str:
        # parse_receipt type-checked the message already
        federation = self.message["federation"]
        return recover_typed(federation, "RoundReceipt", self.message, self.signature, checked=True)


def parse_receipt(blob: bytes) -> ParsedReceipt:
    """Parse and check a receipt file: JSON, canonical bytes, exact fields and types.

    Raises ReceiptFormatError naming the field. Signature recovery is left to the caller.
    """
    try:
        data = json.loads(blob.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReceiptFormatError("receipt", "not ASCII JSON") from None
    if not isinstance(data, dict) or set(data) != _TOP_KEYS:
        raise ReceiptFormatError("receipt", f"expected exactly the keys {sorted(_TOP_KEYS)}")
    try:
        canonical = encode_receipt(data)
    except ValueError:  # NaN/Infinity slipped in
        raise ReceiptFormatError("receipt", "holds a non-finite number") from None
    if canonical != blob:
        raise ReceiptFormatError("receipt", "not in canonical form (bytes differ from re-encoding)")
    if data["format"] != RECEIPT_FORMAT:
        raise ReceiptFormatError("format", f"expected {RECEIPT_FORMAT!r}")
    try:
        check_message("RoundReceipt", data["message"], "message")
    except SignatureError as err:
        field = str(err).split(":", 1)[0]
        raise ReceiptFormatError(field, str(err).split(": ", 1)[-1]) from None
    if not isinstance(data["strategy_params"], dict):
        raise ReceiptFormatError("strategy_params", "expected an object")
    if not isinstance(data["signer"], str):
        raise ReceiptFormatError("signer", "expected an address string")
    if not isinstance(data["signature"], str):
        raise ReceiptFormatError("signature", "expected a hex string")
    message = data["message"]
    if message["status"] not in STATUSES:
        raise ReceiptFormatError("message.status", f"expected one of {STATUSES}")
    for key in ("contributions", "dropped"):
        silos = [item["silo"] for item in message[key]]
        if silos != sorted(set(silos)):
            raise ReceiptFormatError(f"message.{key}", "silos not unique and in name order")
    return ParsedReceipt(
        message=message,
        signer=data["signer"],
        signature=data["signature"],
        strategy_params=data["strategy_params"],
        hash=receipt_hash(blob),
    )


__all__ = [
    "RECEIPT_FILE",
    "RECEIPT_FORMAT",
    "ZERO_HASH",
    "Contribution",
    "ParsedReceipt",
    "ReceiptFormatError",
    "RoundNotary",
    "SignedUpdate",
    "check_silo_update",
    "encode_receipt",
    "parse_receipt",
    "read_receipt_hash",
    "receipt_hash",
    "sign_silo_update",
]
