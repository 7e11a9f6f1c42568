"""EIP-712 signing of silo updates and receipts: domain separation, strict types, low-s only."""

from __future__ import annotations

import json

import pytest
import torch
from eth_account import Account

from fl_ray.receipts.chain import (
    Contribution,
    RoundNotary,
    check_silo_update,
    parse_receipt,
    sign_silo_update,
)
from fl_ray.receipts.hashing import ZERO_HASH, state_hash
from fl_ray.receipts.typed_data import (
    SECP256K1_N,
    SignatureError,
    recover_update_signer,
    sign_update,
    signable,
    update_message,
)

H1, H2 = "0x" + "11" * 32, "0x" + "22" * 32


@pytest.fixture(scope="module")
def silo():
    return Account.from_key("0x" + "42" * 32)


def high_s_twin(signature: str) -> str:
    raw = bytes.fromhex(signature[2:])
    s = int.from_bytes(raw[32:64], "big")
    v = raw[64]
    return "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])).hex()


def test_update_signature_recovers_only_in_its_own_federation(silo):
    sig = sign_update(silo, "fed-a", "run", 3, "transport", H1, 120, H2)
    assert recover_update_signer("fed-a", "run", 3, "transport", H1, 120, H2, sig) == silo.address
    for args in [
        ("fed-b", "run", 3, "transport", H1, 120, H2),  # another federation's domain
        ("fed-a", "run2", 3, "transport", H1, 120, H2),
        ("fed-a", "run", 4, "transport", H1, 120, H2),
        ("fed-a", "run", 3, "housing", H1, 120, H2),
        ("fed-a", "run", 3, "transport", H2, 120, H2),
        ("fed-a", "run", 3, "transport", H1, 121, H2),
        ("fed-a", "run", 3, "transport", H1, 120, H1),
    ]:
        assert recover_update_signer(*args, sig) != silo.address


def test_high_s_twin_recovers_in_eth_account_but_is_rejected_here(silo):
    sig = sign_update(silo, "fed-a", "run", 1, "transport", H1, 10, H2)
    twin = high_s_twin(sig)
    message = signable(
        "fed-a", "SiloUpdate", update_message("fed-a", "run", 1, "transport", H1, 10, H2)
    )
    # eth-account itself accepts the malleable twin: that is why the check exists
    assert Account.recover_message(message, signature=bytes.fromhex(twin[2:])) == silo.address
    with pytest.raises(SignatureError, match="high-s"):
        recover_update_signer("fed-a", "run", 1, "transport", H1, 10, H2, twin)


@pytest.mark.parametrize(
    "bad",
    [
        {"round": "1"},  # eth-account would coerce a string to an int
        {"round": True},
        {"round": -1},
        {"num_examples": 2**64},
        {"update_hash": "0x" + "AB" * 32},  # upper-case hex: one value, two spellings
        {"update_hash": H1[:-2]},
        {"silo": 7},
    ],
)
def test_fields_are_type_checked_before_encoding(silo, bad):
    args = {
        "federation_id": "fed-a",
        "run_id": "run",
        "round_num": 1,
        "silo": "transport",
        "update_hash": H1,
        "num_examples": 10,
        "start_global_hash": H2,
    }
    renamed = {"round": "round_num"}
    for key, value in bad.items():
        args[renamed.get(key, key)] = value
    with pytest.raises(SignatureError):
        sign_update(silo, **args)


def test_silo_update_round_trip_and_coordinator_check(silo):
    start = {"w": torch.zeros(2, 2)}
    update = {"w": torch.ones(2, 2)}
    signed = sign_silo_update(silo, "fed-a", "run", 2, "transport", update, 5, start)
    assert signed.update_hash == state_hash(update)
    contribution = check_silo_update(
        "fed-a", "run", 2, "transport", update, 5, state_hash(start), signed.signature, silo.address
    )
    assert contribution == Contribution(
        "transport", silo.address, signed.update_hash, 5, signed.signature
    )
    tampered = {"w": torch.ones(2, 2) * 2}
    with pytest.raises(SignatureError, match="not the roster address"):
        check_silo_update(
            "fed-a",
            "run",
            2,
            "transport",
            tampered,
            5,
            state_hash(start),
            signed.signature,
            silo.address,
        )
    with pytest.raises(SignatureError, match="not the roster address"):  # trained from elsewhere
        check_silo_update(
            "fed-a", "run", 2, "transport", update, 5, H1, signed.signature, silo.address
        )


def test_notary_receipt_is_canonical_and_signed(silo):
    coordinator = Account.from_key("0x" + "43" * 32)
    notary = RoundNotary(coordinator, "fed-a", "run", "ab" * 32, "0x" + "cd" * 32)
    sig = sign_update(silo, "fed-a", "run", 1, "transport", H1, 10, H2)
    blob = notary.receipt_for_round(
        1,
        "ok",
        H2,
        H1,
        "fedavg",
        {"clip_norm": 1.5},
        [Contribution("transport", silo.address, H1, 10, sig)],
        {"housing": "timeout after 30 s"},
        {"round": 1},
        ZERO_HASH,
    )
    assert blob.endswith(b"}\n") and b" " in blob  # the reason's spaces; no formatting spaces
    parsed = parse_receipt(blob)
    assert parsed.recover_signer() == coordinator.address
    assert parsed.message["recipe_hash"] == "0x" + "ab" * 32
    assert parsed.message["dropped"] == [{"silo": "housing", "reason": "timeout after 30 s"}]
    assert parsed.strategy_params == {"clip_norm": 1.5}
    assert json.loads(blob)["signer"] == coordinator.address
    with pytest.raises(ValueError, match="appears twice"):
        notary.receipt_for_round(
            1, "ok", H2, H1, "fedavg", {}, [Contribution("transport", silo.address, H1, 10, sig)],
            {"transport": "x"}, {}, ZERO_HASH,
        )  # fmt: skip
    lowercase = Contribution("transport", silo.address.lower(), H1, 10, sig)
    with pytest.raises(SignatureError):  # a non-checksummed address is refused, not coerced
        notary.receipt_for_round(1, "ok", H2, H1, "fedavg", {}, [lowercase], {}, {}, ZERO_HASH)


def test_fast_digest_equals_eth_account_encoding(silo):
    """The verifier's own EIP-712 digest must be byte-identical to eth-account's encoder."""
    from eth_hash.auto import keccak

    from fl_ray.receipts.typed_data import typed_digest

    sig = sign_update(silo, "fed-é", "rün", 1, "transport", H1, 10, H2)
    update = update_message("fed-é", "rün", 1, "transport", H1, 10, H2)
    receipt = {
        "federation": "fed-é",
        "run_id": "rün",
        "round": 7,
        "status": "ok",
        "recipe_hash": H1,
        "base_fingerprint": H2,
        "global_before": H1,
        "global_after": H2,
        "server_state_after": H1,
        "strategy": "fedavg",
        "strategy_params_hash": H2,
        "contributions": [
            {
                "silo": "transport",
                "address": silo.address,
                "update_hash": H1,
                "num_examples": 2**40,
                "signature": sig,
            },
        ],  # fmt: skip
        "dropped": [{"silo": "housing", "reason": "timeout — 部門"}],
        "metrics_hash": H1,
        "prev_receipt": H2,
    }
    empty_lists = {**receipt, "contributions": [], "dropped": []}
    for primary, message in [
        ("SiloUpdate", update),
        ("RoundReceipt", receipt),
        ("RoundReceipt", empty_lists),
    ]:
        signable_msg = signable("fed-é", primary, message)
        expected = keccak(b"\x19" + signable_msg.version + signable_msg.header + signable_msg.body)
        assert typed_digest("fed-é", primary, message) == expected
