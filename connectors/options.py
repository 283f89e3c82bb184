"""A connector's options as TOML hands them over, checked one by one, and its credentials.

Every connector reads its untyped options through :class:`Options` when it is
built: each check returns the value in the type the connector needs, or raises a
one-line :class:`~connectors.errors.PermanentError` naming the connector and the
option (``connector 'tickets': timeout must be a number above 0``).

A credential is read into a :class:`Secret`, the one type connectors hold
credentials in: it never shows itself in ``repr``, ``str`` or error messages
(:data:`MASK` stands in for it), and :meth:`Secret.reveal` hands it over only for
the header that carries it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from connectors.errors import PermanentError

MASK = "**********"
"""What a credential shows instead of itself, in ``repr`` and in scrubbed messages."""


class Secret:
    """A credential that never shows itself in ``repr``, ``str`` or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself, for the one header that carries it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__


class Options:
    """Checks one connector's options, each failure a one-line PermanentError naming it.

    TOML hands options over untyped; connectors read each through here at construction.
    """

    def __init__(self, connector: str) -> None:
        self.connector = connector

    def error(self, option: str, problem: str) -> PermanentError:
        """The error for a bad ``option``."""
        return PermanentError(f"connector {self.connector!r}: {option} {problem}")

    def text(self, option: str, value: object) -> str:
        """Non-empty text."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(option, "must be non-empty text")
        return value.strip()

    def optional_text(self, option: str, value: object) -> str | None:
        """Non-empty text, or None when absent."""
        return None if value is None else self.text(option, value)

    def identifier(self, option: str, value: object) -> str:
        """Text or a whole number (ids are often written either way in TOML)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.text(option, value)

    def secret(self, option: str, value: object) -> Secret:
        """A credential: non-empty text, kept as a :class:`Secret`."""
        if not isinstance(value, str) or not value:
            raise self.error(option, "is required (non-empty text)")
        return Secret(value)

    def number(self, option: str, value: object, *, minimum: float = 0.0) -> float:
        """A number no smaller than ``minimum``."""
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.error(option, f"must be a number of at least {minimum:g}")
        return float(value)

    def positive(self, option: str, value: object) -> float:
        """A number above zero."""
        number = self.number(option, value)
        if number <= 0:
            raise self.error(option, "must be a number above 0")
        return number

    def mebibytes(self, option: str, value: object) -> int:
        """A size given in MiB (above zero), in bytes."""
        return max(1, int(self.positive(option, value) * 2**20))

    def whole(self, option: str, value: object, *, minimum: int = 1) -> int:
        """A whole number no smaller than ``minimum``."""
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(option, f"must be a whole number of at least {minimum}")
        return value

    def url(self, option: str, value: object) -> str:
        """An absolute http(s) URL without credentials in it."""
        text = self.text(option, value)
        parts = urlsplit(text)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise self.error(option, f"must be an absolute http(s) URL, got {text!r}")
        if parts.username is not None or parts.password is not None:
            raise self.error(option, "must not carry credentials; configure auth instead")
        if parts.query or parts.fragment:
            raise self.error(option, "must not carry a query or fragment")
        return text.rstrip("/")

    def table(self, option: str, value: object) -> Mapping[str, Any]:
        """A TOML table."""
        if not isinstance(value, Mapping):
            raise self.error(option, "must be a table")
        return value

    def text_list(self, option: str, value: object) -> tuple[str, ...]:
        """A list of non-empty text items (whole numbers are taken as text)."""
        if not isinstance(value, list | tuple):
            raise self.error(option, "must be a list")
        return tuple(self.identifier(f"{option}[{i}]", item) for i, item in enumerate(value))

    def statuses(self, option: str, value: object) -> frozenset[int]:
        """A list of HTTP status codes."""
        if not isinstance(value, list | tuple) or not all(
            isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599
            for code in value
        ):
            raise self.error(option, "must be a list of HTTP status codes")
        return frozenset(value)

    def unknown(self, where: str, table: Mapping[str, Any], known: Collection[str]) -> None:
        """Refuse keys of ``table`` outside ``known``."""
        extra = sorted(set(table) - set(known))
        if extra:
            raise self.error(where, f"has unknown key(s) {', '.join(extra)}")
