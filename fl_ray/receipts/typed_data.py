"""EIP-712 typed data for silo updates and round receipts (https://eips.ethereum.org/EIPS/eip-712).

Domain (both message kinds)::

    EIP712Domain(string name, string version, bytes32 salt)
    name = "fl_ray", version = "1", salt = keccak256(utf-8 bytes of the federation id)

so a signature made for one federation never verifies in another; messages also carry the
federation id as a plain string, which the verifier compares with the roster's.

eth-account's ``encode_typed_data`` silently coerces values (an int given for a string, a
mixed-case hex string, a bool for a uint), so :func:`check_message` checks every field's Python
type and exact text form *before* encoding. Recovery rejects high-s signatures (s > n/2,
secp256k1 n): eth-account accepts both (r, s) and its twin (r, n − s), and only one may be valid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any

from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from eth_keys import keys
from eth_utils import is_checksum_address

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
DOMAIN_NAME = "fl_ray"
DOMAIN_VERSION = "1"
UINT64_MAX = 2**64 - 1

_HASH32 = re.compile(r"^0x[0-9a-f]{64}$")
_SIGNATURE = re.compile(r"^0x[0-9a-f]{130}$")

DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "salt", "type": "bytes32"},
]
UPDATE_FIELDS = [
    ("federation", "string"),
    ("run_id", "string"),
    ("round", "uint64"),
    ("silo", "string"),
    ("update_hash", "bytes32"),
    ("num_examples", "uint64"),
    ("start_global_hash", "bytes32"),
]
CONTRIBUTION_FIELDS = [
    ("silo", "string"),
    ("address", "address"),
    ("update_hash", "bytes32"),
    ("num_examples", "uint64"),
    ("signature", "bytes"),
]
DROPPED_FIELDS = [("silo", "string"), ("reason", "string")]
RECEIPT_FIELDS = [
    ("federation", "string"),
    ("run_id", "string"),
    ("round", "uint64"),
    ("status", "string"),
    ("recipe_hash", "bytes32"),
    ("base_fingerprint", "bytes32"),
    ("global_before", "bytes32"),
    ("global_after", "bytes32"),
    ("server_state_after", "bytes32"),
    ("strategy", "string"),
    ("strategy_params_hash", "bytes32"),
    ("contributions", "Contribution[]"),
    ("dropped", "Dropped[]"),
    ("metrics_hash", "bytes32"),
    ("prev_receipt", "bytes32"),
]
STRUCTS: dict[str, list[tuple[str, str]]] = {
    "SiloUpdate": UPDATE_FIELDS,
    "RoundReceipt": RECEIPT_FIELDS,
    "Contribution": CONTRIBUTION_FIELDS,
    "Dropped": DROPPED_FIELDS,
}


class SignatureError(ValueError):
    """A signature or typed message that does not check out; one-line message."""


def is_hash32(value: Any) -> bool:
    """A ``bytes32`` value in the one text form receipts use: ``0x`` + 64 lowercase hex."""
    return isinstance(value, str) and bool(_HASH32.match(value))


def domain(federation_id: str) -> dict[str, Any]:
    """The EIP-712 domain for a federation (salt = keccak256 of its id)."""
    if not isinstance(federation_id, str) or not federation_id:
        raise SignatureError("federation id must be a non-empty string")
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "salt": "0x" + keccak(federation_id.encode("utf-8")).hex(),
    }


def _types_for(primary: str) -> dict[str, list[dict[str, str]]]:
    types = {"EIP712Domain": DOMAIN_TYPE}
    pending = [primary]
    while pending:
        name = pending.pop()
        types[name] = [{"name": f, "type": t} for f, t in STRUCTS[name]]
        pending += [t[:-2] for _, t in STRUCTS[name] if t.endswith("[]") and t[:-2] not in types]
    return types


def _check_value(where: str, kind: str, value: Any) -> None:
    if kind.endswith("[]"):
        if not isinstance(value, list):
            raise SignatureError(f"{where}: expected a list")
        for i, item in enumerate(value):
            check_message(kind[:-2], item, f"{where}[{i}]")
    elif kind == "string":
        if not isinstance(value, str):
            raise SignatureError(f"{where}: expected a string")
    elif kind == "uint64":
        if type(value) is not int or not 0 <= value <= UINT64_MAX:  # bool is not a count
            raise SignatureError(f"{where}: expected an integer in [0, 2**64)")
    elif kind == "bytes32":
        if not isinstance(value, str) or not _HASH32.match(value):
            raise SignatureError(f"{where}: expected 0x + 64 lowercase hex digits")
    elif kind == "address":
        if not isinstance(value, str) or not is_checksum_address(value):
            raise SignatureError(f"{where}: expected an EIP-55 checksummed address")
    elif kind == "bytes":  # only signatures are carried as bytes
        if not isinstance(value, str) or not _SIGNATURE.match(value):
            raise SignatureError(f"{where}: expected a 65-byte signature as lowercase 0x hex")
    else:  # pragma: no cover - the schemas above use only these kinds
        raise SignatureError(f"{where}: unsupported EIP-712 type {kind}")


def check_message(primary: str, message: Any, where: str = "") -> None:
    """Exact field set and exact types for an EIP-712 struct, before eth-account coerces them."""
    fields = STRUCTS[primary]
    if not isinstance(message, Mapping):
        raise SignatureError(f"{where or primary}: expected an object")
    names = [f for f, _ in fields]
    if set(message) != set(names):
        extra = sorted(set(message) - set(names))
        lacking = [n for n in names if n not in message]
        what = f"unexpected field {extra[0]}" if extra else f"missing field {lacking[0]}"
        raise SignatureError(f"{where or primary}: {what}")
    for name, kind in fields:
        _check_value(f"{where}.{name}" if where else name, kind, message[name])


def signable(federation_id: str, primary: str, message: Mapping[str, Any]) -> SignableMessage:
    """Type-check and EIP-712-encode a message in the federation's domain."""
    check_message(primary, message)
    return encode_typed_data(
        full_message={
            "types": _types_for(primary),
            "primaryType": primary,
            "domain": domain(federation_id),
            "message": dict(message),
        }
    )


def sign_typed(
    account: LocalAccount, federation_id: str, primary: str, message: Mapping[str, Any]
) -> str:
    """Sign an EIP-712 message; returns the 65-byte r‖s‖v signature as lowercase 0x hex."""
    signed = account.sign_message(signable(federation_id, primary, message))
    return "0x" + bytes(signed.signature).hex()


def check_low_s(signature: str) -> None:
    """Reject malformed and malleable signatures: r, s in [1, n), s ≤ n/2, v ∈ {27, 28}."""
    if not isinstance(signature, str) or not _SIGNATURE.match(signature):
        raise SignatureError("signature is not 65 bytes of lowercase 0x hex")
    raw = bytes.fromhex(signature[2:])
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if v not in (27, 28):
        raise SignatureError(f"signature v is {v}, expected 27 or 28")
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SignatureError("signature r or s out of range")
    if s > SECP256K1_N // 2:
        raise SignatureError("high-s signature (s > n/2): the malleable twin is rejected")


def _encode_type(primary: str) -> str:
    """EIP-712 ``encodeType``: the primary struct, then referenced structs in name order."""
    refs = sorted({t[:-2] for _, t in STRUCTS[primary] if t.endswith("[]")})

    def one(name: str) -> str:
        return f"{name}(" + ",".join(f"{t} {f}" for f, t in STRUCTS[name]) + ")"

    return one(primary) + "".join(one(r) for r in refs)


@cache
def _type_hash(primary: str) -> bytes:
    return keccak(_encode_type(primary).encode("ascii"))


def _hash_struct(primary: str, message: Mapping[str, Any]) -> bytes:
    """EIP-712 ``hashStruct`` for our field kinds (the message is already type-checked)."""
    parts = [_type_hash(primary)]
    for name, kind in STRUCTS[primary]:
        value = message[name]
        if kind.endswith("[]"):
            parts.append(keccak(b"".join(_hash_struct(kind[:-2], item) for item in value)))
        elif kind == "string":
            parts.append(keccak(value.encode("utf-8")))
        elif kind == "bytes":
            parts.append(keccak(bytes.fromhex(value[2:])))
        elif kind == "bytes32":
            parts.append(bytes.fromhex(value[2:]))
        elif kind == "uint64":
            parts.append(value.to_bytes(32, "big"))
        elif kind == "address":
            parts.append(bytes(12) + bytes.fromhex(value[2:]))
    return keccak(b"".join(parts))


@lru_cache(maxsize=64)
def _domain_separator(federation_id: str) -> bytes:
    type_hash = keccak(b"EIP712Domain(string name,string version,bytes32 salt)")
    d = domain(federation_id)
    return keccak(
        type_hash
        + keccak(d["name"].encode())
        + keccak(d["version"].encode())
        + bytes.fromhex(d["salt"][2:])
    )


def typed_digest(
    federation_id: str, primary: str, message: Mapping[str, Any], *, checked: bool = False
) -> bytes:
    """The 32-byte EIP-712 digest ``keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct)``.

    Computed here rather than through eth-account (a test pins the two equal) because the
    verifier hashes thousands of messages and eth-account's generic encoder is ~10x slower.
    ``checked=True``: the caller has already run :func:`check_message` on this message.
    """
    if not checked:
        check_message(primary, message)
    return keccak(b"\x19\x01" + _domain_separator(federation_id) + _hash_struct(primary, message))


def recover_typed(
    federation_id: str,
    primary: str,
    message: Mapping[str, Any],
    signature: str,
    *,
    checked: bool = False,
) -> str:
    """The checksummed address that signed ``message``; SignatureError if it cannot be known."""
    check_low_s(signature)
    digest = typed_digest(federation_id, primary, message, checked=checked)
    raw = bytes.fromhex(signature[2:])
    try:
        sig = keys.Signature(vrs=(raw[64] - 27, int.from_bytes(raw[:32], "big"),
                                  int.from_bytes(raw[32:64], "big")))  # fmt: skip
        return sig.recover_public_key_from_msg_hash(digest).to_checksum_address()
    except Exception as err:  # eth-keys raises BadSignature and friends
        raise SignatureError(f"signature does not recover: {type(err).__name__}") from None


def update_message(
    federation_id: str,
    run_id: str,
    round_num: int,
    silo: str,
    update_hash: str,
    num_examples: int,
    start_global_hash: str,
) -> dict[str, Any]:
    """The ``SiloUpdate`` struct a silo signs (type-checked when signed or recovered)."""
    return {
        "federation": federation_id,
        "run_id": run_id,
        "round": round_num,
        "silo": silo,
        "update_hash": update_hash,
        "num_examples": num_examples,
        "start_global_hash": start_global_hash,
    }


def sign_update(
    account: LocalAccount,
    federation_id: str,
    run_id: str,
    round_num: int,
    silo: str,
    update_hash: str,
    num_examples: int,
    start_global_hash: str,
) -> str:
    """A silo's EIP-712 signature over its update (hashes from ``hashing.state_hash``)."""
    message = update_message(
        federation_id, run_id, round_num, silo, update_hash, num_examples, start_global_hash
    )
    return sign_typed(account, federation_id, "SiloUpdate", message)


def recover_update_signer(
    federation_id: str,
    run_id: str,
    round_num: int,
    silo: str,
    update_hash: str,
    num_examples: int,
    start_global_hash: str,
    signature: str,
    *,
    checked: bool = False,
) -> str:
    """The address that signed this silo update (low-s enforced); SignatureError otherwise.

    ``checked=True``: every field was already type-checked (the verifier's fields come from a
    receipt that :func:`check_message` accepted).
    """
    message = update_message(
        federation_id, run_id, round_num, silo, update_hash, num_examples, start_global_hash
    )
    return recover_typed(federation_id, "SiloUpdate", message, signature, checked=checked)
