"""Keystores, roster, run key preparation, and the keygen / keycheck commands."""

from __future__ import annotations

import json
import stat

import pytest
from eth_account import Account

from fl_ray.cli import main
from fl_ray.receipts.keys import (
    KeystoreError,
    RosterError,
    create_demo_keys,
    create_keys,
    load_account,
    load_roster,
    prepare_run_keys,
)

SILOS = ["transport", "housing"]


@pytest.fixture(scope="module")
def demo_keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    roster, password = create_demo_keys(out, "fed-1", SILOS)
    return out, roster, password


def test_demo_keys_are_owner_only_keystores_matching_the_roster(demo_keys):
    out, roster_path, password = demo_keys
    roster = load_roster(roster_path)
    assert roster.federation == "fed-1" and sorted(roster.silos) == sorted(SILOS)
    assert (out / "password.txt").read_text() == password + "\n"
    for name in [*SILOS, "coordinator"]:
        path = out / f"{name}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["crypto"]["kdf"] == "scrypt"
        account = load_account(path, password_file=out / "password.txt")
        expected = roster.coordinator if name == "coordinator" else roster.silos[name]
        assert account.address == expected


def test_load_account_errors_are_one_line_value_errors(demo_keys, tmp_path, monkeypatch):
    out, roster_path, password = demo_keys
    monkeypatch.setenv("FL_RAY_KEY_PASSWORD", "not-the-password")
    with pytest.raises(KeystoreError, match="wrong password for keystore"):
        load_account(out / "transport.json")
    monkeypatch.delenv("FL_RAY_KEY_PASSWORD")
    with pytest.raises(KeystoreError, match=r"set \$FL_RAY_KEY_PASSWORD"):
        load_account(out / "transport.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(KeystoreError, match="unreadable"):
        load_account(tmp_path / "junk.json", password_file=out / "password.txt")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(KeystoreError, match="not a valid keystore"):
        load_account(tmp_path / "empty.json", password_file=out / "password.txt")
    with pytest.raises(KeystoreError, match="not found"):
        load_account(tmp_path / "absent.json", password_file=out / "password.txt")
    roster = load_roster(roster_path)
    with pytest.raises(KeystoreError, match="roster expects"):
        load_account(
            out / "transport.json",
            password_file=out / "password.txt",
            expected_address=roster.silos["housing"],
        )
    assert issubclass(KeystoreError, ValueError)


def test_create_keys_refuses_to_overwrite_and_writes_nothing(demo_keys, tmp_path):
    out, _, _ = demo_keys
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError):
        create_keys(out, "fed-1", ["newsilo", "transport"], "pw", scrypt_n=2**4)
    assert sorted(p.name for p in out.iterdir()) == before


def test_roster_rejects_unchecksummed_and_reused_addresses(tmp_path):
    a = Account.create().address
    path = tmp_path / "roster.json"
    path.write_text(json.dumps({"federation": "f", "coordinator": a.lower(), "silos": {"x": a}}))
    with pytest.raises(RosterError, match="checksummed"):
        load_roster(path)
    path.write_text(json.dumps({"federation": "f", "coordinator": a, "silos": {"x": a}}))
    with pytest.raises(RosterError, match="appears twice"):
        load_roster(path)


def test_prepare_run_keys_makes_demo_keys_once_and_copies_the_roster(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first = prepare_run_keys("fed-1", {s: None for s in SILOS}, run, demo_keys=True)
    assert (run / "roster.json").read_bytes() == (run / "keys" / "roster.json").read_bytes()
    assert first.silo_keystores["housing"] == (run / "keys" / "housing.json").resolve()
    again = prepare_run_keys("fed-1", {s: None for s in SILOS}, run, demo_keys=True)  # resume
    assert again.roster == first.roster
    account = load_account(
        again.silo_keystores["transport"], again.password_env, again.password_file
    )
    assert account.address == first.roster.silos["transport"]


def test_prepare_run_keys_stops_on_wrong_password_or_federation(demo_keys, tmp_path, monkeypatch):
    out, _, _ = demo_keys
    monkeypatch.setenv("FL_RAY_KEY_PASSWORD", "wrong")
    with pytest.raises(KeystoreError, match="wrong password"):
        prepare_run_keys("fed-1", {"transport": None}, tmp_path, demo_keys=False, keys_dir=str(out))
    with pytest.raises(RosterError, match="is for federation 'fed-1'"):
        prepare_run_keys("fed-2", {"transport": None}, tmp_path, demo_keys=False, keys_dir=str(out))


def test_keygen_cli_creates_keystores_and_roster(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KEYPW", "correct horse")
    out = tmp_path / "keys"
    assert (
        main(["keygen", str(out), "--federation", "gov", "--silos", "a", "--password-env", "KEYPW"])
        == 0
    )
    roster = load_roster(out / "roster.json")
    assert roster.federation == "gov" and list(roster.silos) == ["a"]
    assert roster.silos["a"] in capsys.readouterr().out
    keystore = json.loads((out / "a.json").read_text())
    assert keystore["crypto"]["kdfparams"]["n"] == 2**18  # real keys: eth-account's default cost
    assert main(["keycheck", str(out / "a.json"), "--password-env", "KEYPW"]) == 0
    assert capsys.readouterr().out.strip() == roster.silos["a"]


def test_keygen_and_keycheck_bad_password_is_one_line_exit_2(
    demo_keys, tmp_path, monkeypatch, capsys
):
    out, _, _ = demo_keys
    monkeypatch.delenv("FL_RAY_KEY_PASSWORD", raising=False)
    assert main(["keygen", str(tmp_path / "k"), "--federation", "g", "--silos", "a"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no keystore password" in err
    assert not (tmp_path / "k").exists()
    (tmp_path / "pw").write_text("wrong\n")
    assert (
        main(["keycheck", str(out / "housing.json"), "--password-file", str(tmp_path / "pw")]) == 2
    )
    err = capsys.readouterr().err
    assert err == f"fl-ray keycheck: error: wrong password for keystore {out / 'housing.json'}\n"


def test_prepare_run_keys_writes_nothing_when_the_password_is_wrong(
    demo_keys, tmp_path, monkeypatch
):
    out, _, _ = demo_keys
    monkeypatch.setenv("FL_RAY_KEY_PASSWORD", "wrong")
    with pytest.raises(KeystoreError):
        prepare_run_keys("fed-1", {"transport": None}, tmp_path, demo_keys=False, keys_dir=str(out))
    assert list(tmp_path.iterdir()) == []
