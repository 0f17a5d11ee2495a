"""Keys and keyed pseudonyms: stable under one key, unrelated under another, never the key."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from dicomlake.deidentify.keys import Key, keygen
from dicomlake.errors import DeidKeyError

SECRET = bytes(range(32))


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "deid.key"
    made = keygen(path)
    assert len(path.read_bytes()) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Key.from_file(path).fingerprint() == made.fingerprint()
    before = path.read_bytes()
    with pytest.raises(DeidKeyError, match="never overwritten"):
        keygen(path)
    assert path.read_bytes() == before
    assert keygen(tmp_path / "other.key").fingerprint() != made.fingerprint()


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DeidKeyError, match="no key file"):
        Key.from_file(tmp_path / "missing.key")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    with pytest.raises(DeidKeyError, match="31 bytes") as caught:
        Key.from_file(short)
    assert "xxxx" not in str(caught.value)
    with pytest.raises(DeidKeyError, match="cannot read"):
        Key.from_file(tmp_path)  # a folder
    with pytest.raises(DeidKeyError):
        Key(b"short")


def test_fingerprint_and_repr_do_not_reveal_the_key() -> None:
    key = Key(SECRET)
    assert re.fullmatch(r"[0-9a-f]{16}", key.fingerprint())
    assert SECRET.hex()[:16] not in key.fingerprint()
    assert SECRET.hex() not in repr(key) and str(SECRET) not in repr(key)
    assert Key(SECRET).fingerprint() == key.fingerprint()


def test_uid_is_valid_stable_and_keyed() -> None:
    key, other = Key(SECRET), Key(bytes(range(1, 33)))
    original = "1.2.826.0.1.3680043.8.498.12345"
    uid = key.uid(original)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    assert key.uid(original) == uid
    assert key.uid(original + "\0") == uid  # padding is not part of a UID
    assert key.uid(original + "1") != uid
    assert other.uid(original) != uid
    number = int(uid.removeprefix("2.25."))
    assert number < 2**128
    assert (number >> 76) & 0xF == 8  # an RFC 9562 version-8 UUID


def test_patient_pseudonyms() -> None:
    key = Key(SECRET)
    pid, name = key.patient_id("12345"), key.patient_name("12345")
    assert re.fullmatch(r"ANON-[A-Z2-7]{16}", pid)
    assert name == "ANON^" + pid.removeprefix("ANON-")
    assert key.patient_id("12345") == pid and key.patient_id("12346") != pid
    assert Key(bytes(range(1, 33))).patient_id("12345") != pid
    assert "12345" not in pid + name


def test_date_shift_is_per_patient_and_in_range() -> None:
    key = Key(SECRET)
    shifts = {key.date_shift_days(f"P{i}") for i in range(200)}
    assert all(-3650 <= s <= -365 for s in shifts)
    assert len(shifts) > 150
    assert key.date_shift_days("P1") == key.date_shift_days("P1")
