"""Keys and the roster: encrypted keystores (Web3 Secret Storage v3, scrypt) and public addresses.

Each silo and the coordinator owns one secp256k1 key, stored as a keystore v3 JSON file written
by eth-account's ``Account.encrypt`` (scrypt KDF). The password comes from an environment variable
or a file, never from the command line. ``roster.json`` holds only public data:

    {"federation": "<id>", "coordinator": "0x<checksummed>", "silos": {"<name>": "0x..."}}

A silo's key is loaded inside that silo's process (``load_account``) and never travels.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address

DEFAULT_PASSWORD_ENV = "FL_RAY_KEY_PASSWORD"
COORDINATOR = "coordinator"
ROSTER_FILE = "roster.json"
DEMO_PASSWORD_FILE = "password.txt"
# Demo keys are throwaway: a light scrypt cost (n=2**12 instead of eth-account's 2**18) keeps
# demo runs and tests fast. Real keys from `fl-ray keygen` use eth-account's default cost.
DEMO_SCRYPT_N = 2**12


class KeystoreError(ValueError):
    """A keystore that cannot be used (missing, unreadable, wrong password); one-line message."""


class RosterError(ValueError):
    """A roster that cannot be used; one-line message naming the file and the problem."""


@dataclass(frozen=True)
class Roster:
    """Public addresses of one federation: who may sign updates (silos) and receipts."""

    federation: str
    coordinator: str
    silos: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "federation": self.federation,
            "coordinator": self.coordinator,
            "silos": dict(sorted(self.silos.items())),
        }


def read_password(
    password_env: str = DEFAULT_PASSWORD_ENV, password_file: str | Path | None = None
) -> str:
    """The keystore password: ``password_file`` (final newline dropped), else ``$password_env``."""
    if password_file is not None:
        path = Path(password_file)
        try:
            return path.read_text("utf-8").rstrip("\r\n")
        except OSError as err:
            raise KeystoreError(f"cannot read password file {path}: {err.strerror}") from None
    password = os.environ.get(password_env)
    if not password:
        raise KeystoreError(f"no keystore password: set ${password_env} or give a password file")
    return password


def load_account(
    keystore_path: str | Path,
    password_env: str = DEFAULT_PASSWORD_ENV,
    password_file: str | Path | None = None,
    expected_address: str | None = None,
) -> LocalAccount:
    """Decrypt a keystore v3 file; any failure is one :class:`KeystoreError` line.

    ``expected_address`` (e.g. the roster's entry) guards against a keystore for someone else.
    """
    path = Path(keystore_path)
    try:
        keystore = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise KeystoreError(f"keystore not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise KeystoreError(f"keystore {path} is unreadable: {type(err).__name__}") from None
    password = read_password(password_env, password_file)
    try:
        key = Account.decrypt(keystore, password)
    except ValueError as err:
        if "MAC mismatch" in str(err):
            raise KeystoreError(f"wrong password for keystore {path}") from None
        raise KeystoreError(f"keystore {path} is not a valid keystore v3 file") from None
    except Exception as err:  # malformed keystore JSON raises KeyError/TypeError inside
        raise KeystoreError(
            f"keystore {path} is not a valid keystore v3 file ({type(err).__name__})"
        ) from None
    account = Account.from_key(key)
    if expected_address is not None and account.address != expected_address:
        raise KeystoreError(
            f"keystore {path} holds {account.address}, but the roster expects {expected_address}"
        )
    return account


def _write_private(path: Path, text: str) -> None:
    # keystores and passwords are created owner-only from the first byte, never chmod'ed after
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def create_keys(
    out_dir: str | Path,
    federation_id: str,
    silo_names: list[str],
    password: str,
    scrypt_n: int | None = None,
) -> Path:
    """Create ``<silo>.json`` per silo, ``coordinator.json`` and ``roster.json`` in ``out_dir``.

    Refuses (FileExistsError, nothing written) if any of those files exists. ``scrypt_n`` None is
    eth-account's default cost. Returns the roster path.
    """
    if not password:
        raise KeystoreError("refusing an empty keystore password")
    names = list(silo_names)
    if not names or len(set(names)) != len(names) or COORDINATOR in names:
        raise ValueError(f"silo names must be unique, non-empty and not {COORDINATOR!r}: {names}")
    out = Path(out_dir)
    targets = [out / f"{n}.json" for n in [*names, COORDINATOR]] + [out / ROSTER_FILE]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {existing[0]}")
    accounts = {name: Account.create() for name in [*names, COORDINATOR]}
    keystores = {
        name: Account.encrypt(acct.key, password, kdf="scrypt", iterations=scrypt_n)
        for name, acct in accounts.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, keystore in keystores.items():
        _write_private(out / f"{name}.json", json.dumps(keystore, indent=2) + "\n")
    roster = Roster(
        federation=federation_id,
        coordinator=accounts[COORDINATOR].address,
        silos={n: accounts[n].address for n in names},
    )
    (out / ROSTER_FILE).write_text(json.dumps(roster.to_json(), indent=2) + "\n", "utf-8")
    return out / ROSTER_FILE


def create_demo_keys(
    out_dir: str | Path, federation_id: str, silo_names: list[str]
) -> tuple[Path, str]:
    """Throwaway demo keys with a random password written to ``out_dir/password.txt``.

    Light scrypt cost (``DEMO_SCRYPT_N``): for demos and tests only. Returns (roster, password).
    """
    password = secrets.token_hex(16)
    roster = create_keys(out_dir, federation_id, silo_names, password, scrypt_n=DEMO_SCRYPT_N)
    _write_private(Path(out_dir) / DEMO_PASSWORD_FILE, password + "\n")
    return roster, password


def load_roster(path: str | Path) -> Roster:
    """Read and check a roster: federation id, checksummed addresses, no address used twice."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"roster not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RosterError(f"roster {path} is unreadable: {type(err).__name__}") from None
    if not isinstance(data, dict) or set(data) != {"federation", "coordinator", "silos"}:
        raise RosterError(f"roster {path}: expected keys federation, coordinator, silos")
    fed, coord, silos = data["federation"], data["coordinator"], data["silos"]
    if not isinstance(fed, str) or not fed:
        raise RosterError(f"roster {path}: federation must be a non-empty string")
    if not isinstance(silos, dict) or not silos:
        raise RosterError(f"roster {path}: silos must map silo names to addresses")
    for role, address in [(COORDINATOR, coord), *silos.items()]:
        if not isinstance(address, str) or not is_checksum_address(address):
            raise RosterError(f"roster {path}: {role} address {address!r} is not checksummed")
    addresses = [coord, *silos.values()]
    if len(set(addresses)) != len(addresses):
        raise RosterError(f"roster {path}: an address appears twice")
    return Roster(federation=fed, coordinator=coord, silos=dict(silos))


@dataclass(frozen=True)
class RunKeys:
    """Where a run's keys are: what the runner hands the coordinator and each silo actor."""

    federation_id: str
    roster_path: Path  # the copy inside the run directory
    roster: Roster
    coordinator_keystore: Path
    silo_keystores: dict[str, Path]
    password_env: str
    password_file: Path | None


def prepare_run_keys(
    federation_id: str,
    silo_keystores: dict[str, str | None],
    run_root: str | Path,
    *,
    demo_keys: bool,
    keys_dir: str | None = None,
    roster: str | None = None,
    password_env: str = DEFAULT_PASSWORD_ENV,
    password_file: str | None = None,
) -> RunKeys:
    """Resolve (or, with ``demo_keys``, create under ``RUN/keys``) a run's keys and copy the
    roster to ``RUN/roster.json``. Idempotent on resume. Checks the coordinator's keystore
    decrypts to the roster's coordinator address, so a bad password stops the run before it starts.

    ``silo_keystores`` maps every silo name to its recipe ``keystore`` (None: keys_dir/<name>.json).
    """
    root = Path(run_root)
    names = list(silo_keystores)
    if demo_keys:
        keys = root / "keys"
        if not (keys / ROSTER_FILE).exists():
            create_demo_keys(keys, federation_id, names)
        password_file, password_env = str(keys / DEMO_PASSWORD_FILE), DEFAULT_PASSWORD_ENV
        keys_dir, roster = str(keys), str(keys / ROSTER_FILE)
    elif keys_dir is None:
        raise KeystoreError("federation.keys_dir is required to sign (or set federation.demo_keys)")
    keys_path = Path(keys_dir).resolve()
    roster_src = Path(roster).resolve() if roster else keys_path / ROSTER_FILE
    loaded = load_roster(roster_src)
    if loaded.federation != federation_id:
        raise RosterError(
            f"roster {roster_src} is for federation {loaded.federation!r}, not {federation_id!r}"
        )
    missing = [n for n in names if n not in loaded.silos]
    if missing:
        raise RosterError(f"roster {roster_src} has no address for silo {missing[0]!r}")
    pw_file = Path(password_file).resolve() if password_file else None
    coordinator = keys_path / f"{COORDINATOR}.json"
    # every check before the first write: a bad password leaves the run directory untouched
    load_account(coordinator, password_env, pw_file, expected_address=loaded.coordinator)
    run_copy = root / ROSTER_FILE
    if run_copy.exists():
        if run_copy.read_bytes() != roster_src.read_bytes():
            raise RosterError(f"{run_copy} differs from {roster_src}; the run was signed with it")
    else:
        shutil.copyfile(roster_src, run_copy)
    return RunKeys(
        federation_id=federation_id,
        roster_path=run_copy.resolve(),
        roster=loaded,
        coordinator_keystore=coordinator,
        silo_keystores={
            n: Path(ks).resolve() if ks else keys_path / f"{n}.json"
            for n, ks in silo_keystores.items()
        },
        password_env=password_env,
        password_file=pw_file,
    )
