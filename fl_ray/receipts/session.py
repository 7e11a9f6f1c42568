"""A run's signing, as the live run uses it: silos sign their updates inside their own process,
the coordinator checks every signature and signs one chained receipt per round.

Both classes hold key *paths* until they are opened inside the process that may use the key, so
a silo's private key is decrypted only in that silo's actor and never travels.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from fl_ray.model import AdapterState
from fl_ray.receipts.chain import (
    Contribution,
    RoundNotary,
    check_silo_update,
    read_receipt_hash,
    receipt_hash,
    sign_silo_update,
)
from fl_ray.receipts.hashing import ZERO_HASH, base_model_fingerprint, state_hash
from fl_ray.receipts.keys import RunKeys, load_account


@dataclass(frozen=True)
class RunIdentity:
    """What every signature names: the keys' locations, the run id and the recipe's hash."""

    keys: RunKeys
    run_id: str
    recipe_sha256: str


class SiloSigner:
    """Signs one silo's updates; built inside that silo's actor (the key stays there)."""

    def __init__(self, identity: RunIdentity, silo: str) -> None:
        keys = identity.keys
        self.identity, self.silo = identity, silo
        self.account = load_account(
            keys.silo_keystores[silo],
            keys.password_env,
            keys.password_file,
            expected_address=keys.roster.silos[silo],
        )

    def sign(
        self, round_num: int, state: AdapterState, num_examples: int, start: AdapterState
    ) -> str:
        return sign_silo_update(
            self.account,
            self.identity.keys.federation_id,
            self.identity.run_id,
            round_num,
            self.silo,
            state,
            num_examples,
            start,
        ).signature


class CoordinatorNotary:
    """Checks silo signatures and writes the chained, signed receipt of every round."""

    def __init__(self, identity: RunIdentity, base_model_path: str) -> None:
        keys = identity.keys
        account = load_account(
            keys.coordinator_keystore,
            keys.password_env,
            keys.password_file,
            expected_address=keys.roster.coordinator,
        )
        self.identity = identity
        self._key = account.key
        self.notary = RoundNotary(
            account,
            keys.federation_id,
            identity.run_id,
            identity.recipe_sha256,
            base_model_fingerprint(base_model_path),
        )
        self.prev_receipt = ZERO_HASH

    def secret_seed(self, *parts: object) -> int:
        """A seed only the coordinator can compute (keyed by its private key), stable across
        resumes: DP noise drawn from a public seed could be recomputed and subtracted."""
        mac = hmac.new(bytes(self._key), repr(parts).encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:8], "big") >> 1

    def resume_after(self, round_dir) -> None:
        """Continue the chain from the receipt of the last complete round."""
        self.prev_receipt = read_receipt_hash(round_dir)

    def check(
        self,
        round_num: int,
        silo: str,
        state: AdapterState,
        num_examples: int,
        signature: str,
        global_hash: str,
    ) -> Contribution:
        """Raises SignatureError (one line: the drop reason) unless the roster's key signed it."""
        keys = self.identity.keys
        return check_silo_update(
            keys.federation_id,
            self.identity.run_id,
            round_num,
            silo,
            state,
            num_examples,
            global_hash,
            signature,
            keys.roster.silos[silo],
        )

    def receipt(
        self,
        round_num: int,
        status: str,
        before: AdapterState,
        after: AdapterState,
        server_state: AdapterState,
        strategy: str,
        params: dict[str, Any],
        contributions: list[Contribution],
        dropped: dict[str, str],
        metrics: dict[str, Any],
    ) -> bytes:
        """The round's receipt.json bytes; the chain advances to it."""
        blob = self.notary.receipt_for_round(
            round_num,
            status,
            state_hash(before),
            state_hash(after),
            strategy,
            params,
            sorted(contributions, key=lambda c: c.silo),
            dropped,
            metrics,
            self.prev_receipt,
            server_state_after=state_hash(server_state),
        )
        self.prev_receipt = receipt_hash(blob)
        return blob
