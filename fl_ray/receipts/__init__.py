"""Signed, hash-chained round receipts and their offline verification (docs/receipts.md).

Pure library: no Ray. Silos sign their updates (EIP-712), the coordinator signs one receipt per
round linking to the previous one, and :func:`verify_run` audits a run directory offline.
"""

from fl_ray.receipts.chain import (
    RECEIPT_FILE,
    Contribution,
    ReceiptFormatError,
    RoundNotary,
    SignedUpdate,
    check_silo_update,
    parse_receipt,
    read_receipt_hash,
    receipt_hash,
    sign_silo_update,
)
from fl_ray.receipts.hashing import (
    EMPTY_STATE_HASH,
    ZERO_HASH,
    base_model_fingerprint,
    metrics_hash,
    state_hash,
)
from fl_ray.receipts.keys import (
    KeystoreError,
    Roster,
    RosterError,
    RunKeys,
    create_demo_keys,
    create_keys,
    load_account,
    load_roster,
    prepare_run_keys,
)
from fl_ray.receipts.typed_data import SignatureError, recover_update_signer, sign_update
from fl_ray.receipts.verdict import VerifyFailure, VerifyResult
from fl_ray.receipts.verify import verify_run

__all__ = [
    "EMPTY_STATE_HASH",
    "RECEIPT_FILE",
    "ZERO_HASH",
    "Contribution",
    "KeystoreError",
    "ReceiptFormatError",
    "Roster",
    "RosterError",
    "RoundNotary",
    "RunKeys",
    "SignatureError",
    "SignedUpdate",
    "VerifyFailure",
    "VerifyResult",
    "base_model_fingerprint",
    "check_silo_update",
    "create_demo_keys",
    "create_keys",
    "load_account",
    "load_roster",
    "metrics_hash",
    "parse_receipt",
    "prepare_run_keys",
    "read_receipt_hash",
    "receipt_hash",
    "recover_update_signer",
    "sign_silo_update",
    "sign_update",
    "state_hash",
    "verify_run",
]
