"""The secret key behind every pseudonym: UIDs, patient IDs and names, date shifts.

Pseudonyms are HMAC-SHA256 of the original value under the key, with a label per use
so that one value never yields the same bytes for two purposes. They are therefore
stable (the same study de-identified twice, or a SEG and its image de-identified
apart, map to the same UIDs) and cannot be reversed or recomputed by anyone who lacks
the key, unlike a plain hash of a guessable value such as a patient ID. Nothing here
logs or raises with an original value or the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from dicomlake.errors import DeidKeyError

#: Shortest key accepted: 256 bits, HMAC-SHA256's own strength.
KEY_BYTES: Final = 32
#: Shifts lie in [-SHIFT_MAX_DAYS, -SHIFT_MIN_DAYS]: always into the past (a shifted
#: date never lands in the future) and at least a year, so a shifted date cannot be
#: mistaken for the real one by a reader who sees a plausible near-real date.
SHIFT_MIN_DAYS: Final = 365
SHIFT_MAX_DAYS: Final = 3650


class Key:
    """A de-identification key: bytes kept out of ``repr`` and never written out."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < KEY_BYTES:
            raise DeidKeyError(f"a key must hold at least {KEY_BYTES} bytes")
        self._secret = bytes(secret)

    def __repr__(self) -> str:
        return f"Key(fingerprint={self.fingerprint()!r})"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Key:
        """Read a key file written by :func:`keygen` (or any 32+ random bytes).

        Raises:
            DeidKeyError: The file is missing, unreadable or shorter than 32 bytes.
        """
        try:
            secret = Path(path).read_bytes()
        except FileNotFoundError:
            raise DeidKeyError(f"no key file at {os.fspath(path)}") from None
        except OSError as exc:
            raise DeidKeyError(
                f"cannot read the key file {os.fspath(path)}: {exc.strerror}"
            ) from None
        if len(secret) < KEY_BYTES:
            raise DeidKeyError(
                f"the key file {os.fspath(path)} holds {len(secret)} bytes;"
                f" a key must hold at least {KEY_BYTES}"
            )
        return cls(secret)

    def _mac(self, label: bytes, value: str) -> bytes:
        return hmac.new(self._secret, label + value.encode("utf-8"), hashlib.sha256).digest()

    def fingerprint(self) -> str:
        """A short hex name of the key, to tell keys apart in logs; it reveals nothing."""
        return hmac.new(self._secret, b"dicomlake-key-fingerprint", hashlib.sha256).hexdigest()[:16]

    def uid(self, original: str) -> str:
        """The UID that replaces ``original``: ``2.25.`` and a 128-bit keyed number.

        The 16 bytes are made an RFC 9562 version-8 (custom) UUID, so the result is a
        proper 2.25 UID (PS3.5 B.2); it has at most 44 characters.
        """
        raw = bytearray(self._mac(b"uid:", original.strip("\0 "))[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def _token(self, original_patient_id: str) -> str:
        digest = self._mac(b"patient:", original_patient_id.strip())
        return base64.b32encode(digest[:10]).decode("ascii")

    def patient_id(self, original_patient_id: str) -> str:
        """The Patient ID (LO) of a patient: ``ANON-`` and 16 keyed base32 characters."""
        return f"ANON-{self._token(original_patient_id)}"

    def patient_name(self, original_patient_id: str) -> str:
        """The Patient's Name (PN) of a patient, keyed on the original Patient ID.

        Keyed on the ID, not the name, so that a patient keeps one name across files
        whose names were spelled differently, and matches its pseudonymous ID.
        """
        return f"ANON^{self._token(original_patient_id)}"

    def date_shift_days(self, original_patient_id: str) -> int:
        """The days every date of this patient moves by: one negative shift per patient.

        In ``[-3650, -365]``; intervals between a patient's dates are kept exactly.
        """
        digest = self._mac(b"date-shift:", original_patient_id.strip())
        span = SHIFT_MAX_DAYS - SHIFT_MIN_DAYS + 1
        return -(SHIFT_MIN_DAYS + int.from_bytes(digest[:8], "big") % span)

    def token(self, label: str, original: str, length: int) -> str:
        """``length`` keyed hex characters for ``original``: a stable stand-in value."""
        return self._mac(label.encode("ascii") + b":", original).hex()[:length].upper()


def keygen(path: str | os.PathLike[str]) -> Key:
    """Write a new random key to ``path`` (mode 0600) and return it.

    Raises:
        DeidKeyError: ``path`` exists already (a key is never overwritten: files made
            with it could no longer be linked) or cannot be written.
    """
    secret = secrets.token_bytes(KEY_BYTES)
    target = os.fspath(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DeidKeyError(f"a file exists at {target}; keys are never overwritten") from None
    except OSError as exc:
        raise DeidKeyError(f"cannot create the key file {target}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret)
    finally:
        os.close(fd)
    return Key(secret)
