"""Object-storage settings, in the two forms the layers below need.

Sources are listed and read through fsspec (s3fs for ``s3://``), the lake is written
and read through delta-rs, and the two name the same settings differently: s3fs takes
``key``, ``secret``, ``anon`` and ``client_kwargs={"endpoint_url": ...}``, delta-rs
takes ``AWS_ACCESS_KEY_ID``, ``AWS_SKIP_SIGNATURE``, ``AWS_ENDPOINT_URL``.
:class:`StorageConfig` holds them once and gives each form: :meth:`StorageConfig.fsspec`
and :meth:`StorageConfig.delta`.

Credentials usually come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``) or the AWS config files; both libraries read
those themselves, so a config built from nothing passes nothing, except what delta-rs
cannot infer: ``AWS_ALLOW_HTTP=true`` when the endpoint is plain ``http://`` (a local
MinIO or moto).

Commits need no lock: delta-rs 1.6.6 writes each commit file with a conditional put
(``If-None-Match: *``), which S3 (since 2024), MinIO and moto honour, so two writers
cannot both claim a version. Stores without conditional puts need
``AWS_S3_ALLOW_UNSAFE_RENAME=true`` (one writer at a time) or a DynamoDB lock, passed
as extra delta-rs options.

Wherever the API takes ``storage_options`` it takes a :class:`StorageConfig` or a plain
dict (:data:`dicomlake._types.StorageOptions`), read by :meth:`StorageConfig.coerce`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

# option name (upper case) -> StorageConfig field, for the names both forms know
_FIELDS: dict[str, str] = {
    "KEY": "key",
    "AWS_ACCESS_KEY_ID": "key",
    "SECRET": "secret",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "TOKEN": "token",
    "AWS_SESSION_TOKEN": "token",
    "AWS_TOKEN": "token",
    "REGION": "region",
    "REGION_NAME": "region",
    "AWS_REGION": "region",
    "AWS_DEFAULT_REGION": "region",
    "ENDPOINT_URL": "endpoint_url",
    "AWS_ENDPOINT_URL": "endpoint_url",
    "AWS_ENDPOINT": "endpoint_url",
    "PROFILE": "profile",
    "AWS_PROFILE": "profile",
    "ANON": "anon",
    "AWS_SKIP_SIGNATURE": "anon",
}


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"storage option {name} must be true or false, got {value!r}")


# option name (upper case) -> Retries field
_RETRY_FIELDS: dict[str, str] = {
    "MAX_ATTEMPTS": "max_attempts",
    "AWS_MAX_ATTEMPTS": "max_attempts",
    "CONNECT_TIMEOUT": "connect_timeout",
    "READ_TIMEOUT": "read_timeout",
    "RETRY_MODE": "mode",
    "AWS_RETRY_MODE": "mode",
}
_RETRY_MODES = ("standard", "adaptive", "legacy")
S3_PROTOCOLS = frozenset({"s3", "s3a"})
#: How often s3fs itself runs a request that botocore gave up on (s3fs's default is 5,
#: which would multiply botocore's attempts by 5, and by 25 for reads). 2 keeps the one
#: retry only s3fs can make: a read whose body was cut off after its headers came.
S3FS_RETRIES = 2


@dataclass(frozen=True)
class Retries:
    """How requests to object storage are retried, and how long each may wait.

    botocore retries every request (a HEAD, a GET, each page of a listing) that
    fails with a throttling reply (503 SlowDown, 429), a server error (500, 502, 503,
    504), a refused, reset or dropped connection, or a timeout, up to
    ``max_attempts`` attempts in all, waiting a random time of up to 1, 2, 4, 8...
    seconds (at most 20) before each retry. s3fs then runs a request that still
    failed with a dropped connection, a timeout or SlowDown once more, and likewise a
    read whose body was cut off (which botocore cannot retry). So a HEAD or a listing
    page makes at most ``2 * max_attempts`` requests and a read ``4 * max_attempts``.
    A server that accepts connections and never answers costs ``read_timeout`` per
    attempt; the local engine's per-file timeout (``--file-timeout``) bounds a file's
    total time whatever happens.

    In ``standard`` mode botocore also keeps a retry budget per client, so a store
    that fails every request stops being retried after about a hundred retries
    until requests succeed again; ``adaptive`` adds client-side rate limiting when
    throttled; ``legacy`` is botocore's old policy.

    Args:
        max_attempts: Attempts per request, the first included (``AWS_MAX_ATTEMPTS``).
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds to wait for each read from the socket.
        mode: botocore's retry mode: ``standard``, ``adaptive`` or ``legacy``
            (``AWS_RETRY_MODE``).

    Raises:
        ValueError: If a value is out of range.

    Example:
        >>> Retries(max_attempts=3, read_timeout=5).botocore_config()["retries"]
        {'mode': 'standard', 'total_max_attempts': 3}
    """

    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    mode: str = "standard"

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(
                f"max_attempts must be a whole number of attempts >= 1, got {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be a whole number of attempts >= 1, got {self.max_attempts}"
            )
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.mode not in _RETRY_MODES:
            raise ValueError(
                f"retry mode must be one of {', '.join(map(repr, _RETRY_MODES))}, got {self.mode!r}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Retries:
        """Read ``max_attempts``, ``connect_timeout``, ``read_timeout`` and ``mode``.

        Values may be text, as ``--storage-option KEY=VALUE`` gives them.

        Args:
            options: Field name to value; absent fields keep their defaults.

        Returns:
            The settings.

        Raises:
            ValueError: If a value is not a number where one is needed, or out of range.
        """
        values: dict[str, Any] = {}
        for name, value in options.items():
            values[name] = _parse_retry_value(name, value)
        return cls(**values)

    def botocore_config(self) -> dict[str, Any]:
        """The ``botocore.config.Config`` arguments (s3fs's ``config_kwargs``)."""
        return {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retries": {"mode": self.mode, "total_max_attempts": self.max_attempts},
        }


def _parse_retry_value(name: str, value: Any) -> Any:
    """A :class:`Retries` field from an option value, which may be text."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if name == "max_attempts":
            return int(text)
        if name in ("connect_timeout", "read_timeout"):
            return float(text.removesuffix("s"))
    except ValueError:
        kind = "a whole number" if name == "max_attempts" else "a number of seconds"
        raise ValueError(f"storage option {name} must be {kind}, got {value!r}") from None
    return text.lower()


@dataclass(frozen=True, eq=True)
class StorageConfig(Mapping[str, Any]):
    """Where and how to reach object storage, for both fsspec and delta-rs.

    Every field left unset is left to the libraries, which read the standard AWS
    environment variables and config files. A config is picklable, so worker
    processes get it with the kernel. It is also a read-only mapping of its fsspec
    options, so it can be passed as ``**storage_options`` to fsspec directly.

    Args:
        key: Access key id (``AWS_ACCESS_KEY_ID``).
        secret: Secret access key (``AWS_SECRET_ACCESS_KEY``).
        token: Session token (``AWS_SESSION_TOKEN``).
        region: Region (``AWS_REGION``).
        endpoint_url: An S3-compatible endpoint (MinIO, moto, R2), ``AWS_ENDPOINT_URL``.
        profile: A profile of the AWS config files (``AWS_PROFILE``).
        anon: Send unsigned requests (public buckets); no credentials are looked up.
        retries: Retries and timeouts of requests to S3 sources (see :class:`Retries`);
            in a plain dict, ``max_attempts``, ``connect_timeout``, ``read_timeout``
            and ``retry_mode``.
        fsspec_extra: More keyword arguments for the fsspec file system.
        delta_extra: More delta-rs storage options (``AWS_S3_ALLOW_UNSAFE_RENAME``...).

    Example:
        >>> config = StorageConfig(endpoint_url="http://127.0.0.1:9000", anon=True)
        >>> config.fsspec()
        {'anon': True, 'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000'}}
        >>> sorted(config.delta().items())  # doctest: +NORMALIZE_WHITESPACE
        [('AWS_ALLOW_HTTP', 'true'), ('AWS_ENDPOINT_URL', 'http://127.0.0.1:9000'),
         ('AWS_SKIP_SIGNATURE', 'true')]
    """

    key: str | None = None
    secret: str | None = None
    token: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    anon: bool = False
    retries: Retries = field(default_factory=Retries)
    fsspec_extra: Mapping[str, Any] = field(default_factory=dict)
    delta_extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.anon and (self.key or self.secret or self.token or self.profile):
            raise ValueError(
                "anonymous access sends no credentials: drop anon or drop the key, "
                "secret, token and profile"
            )
        if (self.key is None) != (self.secret is None):
            raise ValueError("an access key id needs its secret access key, and vice versa")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"endpoint_url must start with http:// or https://, got {self.endpoint_url!r}"
            )
        if not isinstance(self.retries, Retries):
            raise TypeError(
                f"retries must be a dicomlake.storage.Retries, got {type(self.retries).__name__}"
            )

    # -------------------------------------------------------------- construction

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> StorageConfig:
        """Read a plain dict of options in either library's words.

        ``key``/``AWS_ACCESS_KEY_ID``, ``secret``/``AWS_SECRET_ACCESS_KEY``,
        ``token``/``AWS_SESSION_TOKEN``, ``region``/``AWS_REGION``,
        ``endpoint_url``/``AWS_ENDPOINT_URL``, ``profile``/``AWS_PROFILE`` and
        ``anon``/``AWS_SKIP_SIGNATURE`` (names are case-insensitive) fill the
        fields; ``max_attempts``/``AWS_MAX_ATTEMPTS``, ``connect_timeout``,
        ``read_timeout`` and ``retry_mode``/``AWS_RETRY_MODE`` (or ``retries``, a
        :class:`Retries`) fill :attr:`retries`; ``client_kwargs`` may carry
        ``endpoint_url`` and ``region_name``;
        any other name in upper case or starting with ``AWS_`` goes to delta-rs only,
        the rest to fsspec only.

        Args:
            options: The options.

        Returns:
            The config.

        Raises:
            ValueError: If a value is invalid (a non-boolean ``anon``, a key without
                its secret, ``anon`` with credentials, a retry setting out of range).

        Example:
            >>> StorageConfig.from_options({"AWS_REGION": "eu-west-1", "anon": "true"})
            StorageConfig(region='eu-west-1', anon=True)
        """
        values: dict[str, Any] = {}
        retries: dict[str, Any] = {}
        fs_extra: dict[str, Any] = {}
        delta_extra: dict[str, str] = {}
        for name, value in options.items():
            upper = name.upper()
            target = _FIELDS.get(upper)
            if upper in _RETRY_FIELDS:
                retries[_RETRY_FIELDS[upper]] = value
            elif upper == "RETRIES":
                if not isinstance(value, Retries):
                    raise ValueError(
                        "storage option retries takes a dicomlake.storage.Retries; for a "
                        f"number of attempts use max_attempts={value!r}"
                    )
                values["retries"] = value
            elif name == "client_kwargs" and isinstance(value, Mapping):
                rest = dict(value)
                if "endpoint_url" in rest:
                    values["endpoint_url"] = rest.pop("endpoint_url")
                if "region_name" in rest:
                    values["region"] = rest.pop("region_name")
                if rest:
                    fs_extra["client_kwargs"] = rest
            elif target == "anon":
                values["anon"] = _as_bool(name, value)
            elif target is not None:
                values[target] = None if value is None else str(value)
            elif name == upper or upper.startswith("AWS_"):
                delta_extra[upper] = str(value)
            else:
                fs_extra[name] = value
        if retries:
            base = values.get("retries", Retries())
            values["retries"] = Retries.from_options({**asdict(base), **retries})
        return cls(**values, fsspec_extra=fs_extra, delta_extra=delta_extra)

    @classmethod
    def coerce(cls, value: StorageConfig | Mapping[str, Any] | None) -> StorageConfig:
        """Normalise what callers pass as ``storage_options``.

        Args:
            value: A config, a plain dict (see :meth:`from_options`) or None.

        Returns:
            A config (an empty one for None).

        Raises:
            ValueError: If a plain dict holds an invalid value.
            TypeError: If ``value`` is neither.
        """
        if value is None:
            return cls()
        if isinstance(value, StorageConfig):
            return value
        if isinstance(value, Mapping):
            return cls.from_options(value)
        raise TypeError(
            f"storage_options must be a StorageConfig or a dict, got {type(value).__name__}"
        )

    # -------------------------------------------------------------------- forms

    def fsspec(self, protocol: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``fsspec`` / ``s3fs.S3FileSystem``.

        Args:
            protocol: The protocol of the URL they are for; for ``s3``/``s3a`` the
                retry and timeout settings are added as botocore ``config_kwargs``
                (under any given in ``fsspec_extra``, which win).

        Returns:
            Only what was set: ``key``, ``secret``, ``token``, ``profile``, ``anon``,
            ``client_kwargs`` (``endpoint_url``, ``region_name``) and the extras,
            plus ``config_kwargs`` for S3.
        """
        out: dict[str, Any] = {}
        for name in ("key", "secret", "token", "profile"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.anon:
            out["anon"] = True
        extra = dict(self.fsspec_extra)
        client = dict(extra.pop("client_kwargs", None) or {})
        if self.endpoint_url is not None:
            client["endpoint_url"] = self.endpoint_url
        if self.region is not None:
            client["region_name"] = self.region
        out.update(extra)
        if client:
            out["client_kwargs"] = client
        if protocol in S3_PROTOCOLS:
            out["config_kwargs"] = {
                **self.retries.botocore_config(),
                **extra.get("config_kwargs", {}),
            }
        return out

    def delta(self) -> dict[str, str]:
        """Storage options for delta-rs (:mod:`deltalake`).

        Returns:
            Only what was set, in delta-rs's names, plus ``AWS_ALLOW_HTTP=true``
            when the endpoint (set here or in ``AWS_ENDPOINT_URL``) is plain
            ``http://``, which delta-rs refuses otherwise.
        """
        out: dict[str, str] = {}
        names = {
            "key": "AWS_ACCESS_KEY_ID",
            "secret": "AWS_SECRET_ACCESS_KEY",
            "token": "AWS_SESSION_TOKEN",
            "region": "AWS_REGION",
            "endpoint_url": "AWS_ENDPOINT_URL",
            "profile": "AWS_PROFILE",
        }
        for name, option in names.items():
            value = getattr(self, name)
            if value is not None:
                out[option] = value
        if self.anon:
            out["AWS_SKIP_SIGNATURE"] = "true"
        endpoint = (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint and endpoint.startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
        out.update(self.delta_extra)
        return out

    # ------------------------------------------------------- mapping (fsspec form)

    def __getitem__(self, name: str) -> Any:
        return self.fsspec()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fsspec())

    def __len__(self) -> int:
        return len(self.fsspec())

    def __bool__(self) -> bool:
        return bool(self.fsspec() or self.delta()) or self.retries != Retries()

    def __repr__(self) -> str:
        shown = []
        for name in ("key", "region", "endpoint_url", "profile"):
            value = getattr(self, name)
            if value is not None:
                shown.append(f"{name}={value!r}")
        if self.secret is not None:
            shown.append("secret='***'")
        if self.token is not None:
            shown.append("token='***'")
        if self.anon:
            shown.append("anon=True")
        if self.retries != Retries():
            shown.append(f"retries={self.retries!r}")
        if self.fsspec_extra:
            shown.append(f"fsspec_extra={sorted(self.fsspec_extra)}")
        if self.delta_extra:
            shown.append(f"delta_extra={sorted(self.delta_extra)}")
        return f"StorageConfig({', '.join(shown)})"


def fsspec_options(value: StorageOptions, protocol: str | None = None) -> dict[str, Any]:
    """The fsspec keyword arguments of a config or plain dict (see :class:`StorageConfig`).

    Args:
        value: A config, a plain dict or None.
        protocol: The URL's protocol; ``s3`` adds the retry settings.

    Returns:
        Keyword arguments for fsspec.

    Raises:
        ValueError: If a plain dict holds an invalid value.
    """
    return StorageConfig.coerce(value).fsspec(protocol)


def delta_options(value: StorageOptions) -> dict[str, str] | None:
    """The delta-rs storage options of a config or plain dict, None when empty.

    Args:
        value: A config, a plain dict or None.

    Returns:
        Options for :mod:`deltalake`, or None when there are none.

    Raises:
        ValueError: If a plain dict holds an invalid value.
    """
    return StorageConfig.coerce(value).delta() or None


def parse_storage_option(text: str) -> tuple[str, str]:
    """Split one ``KEY=VALUE`` of the command line's ``--storage-option``.

    Args:
        text: The option text.

    Returns:
        ``(KEY, VALUE)``; the value may be empty and may contain ``=``.

    Raises:
        ValueError: If there is no ``=`` or the key is empty.

    Example:
        >>> parse_storage_option("AWS_REGION=eu-west-1")
        ('AWS_REGION', 'eu-west-1')
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(
            f"--storage-option takes KEY=VALUE (e.g. AWS_REGION=eu-west-1), got {text!r}"
        )
    return name, value
