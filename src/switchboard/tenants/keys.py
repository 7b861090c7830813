"""An API key: its id, its display prefix, the SHA-256 digest of its secret, and its limits.

The secret itself (`sk-sb-` + 43 url-safe characters, 256 bits) exists only in the return value of
`new_secret`: it is shown once by `switchboard keys create` and never stored, logged or sent back.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import secrets

SECRET_PREFIX = "sk-sb-"
DISPLAY_CHARS = 10  # "sk-sb-" and four random characters: enough to tell keys apart in a table, useless to guess with


class OnViolation(str, enum.Enum):
    """What to do when no expert meets the key's quality floor and cost ceiling (docs/tenants.md)."""

    DEGRADE = "degrade"
    QUEUE = "queue"
    REJECT = "reject"


@dataclasses.dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None
    quality_floor: float | None = None
    usd_per_mtok_ceiling: float | None = None
    on_violation: OnViolation = OnViolation.REJECT

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "usd_per_day", "usd_per_month", "usd_per_mtok_ceiling"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.quality_floor is not None and not 0 <= self.quality_floor <= 1:
            raise ValueError(f"quality_floor must be between 0 and 1, got {self.quality_floor}")

    @property
    def has_budget(self) -> bool:
        return self.usd_per_day is not None or self.usd_per_month is not None

    @property
    def has_answer_policy(self) -> bool:
        return self.quality_floor is not None or self.usd_per_mtok_ceiling is not None


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    tenant: str
    prefix: str
    digest: str
    limits: KeyLimits
    created_at: float
    revoked_at: float | None = None

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


def new_secret() -> str:
    # The one place that must not take a seeded generator: a key has to be unguessable, so it comes from the OS.
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def digest_of(secret: str) -> str:
    """SHA-256 hex digest. No salt or slow hash needed: the secret is 256 random bits, not a password."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_CHARS]


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
