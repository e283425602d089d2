"""RFC 9457 problem types: the one error vocabulary of server and client.

Every refusal the server makes is a :class:`Problem` with a stable ``type``
URI. The server raises :class:`HashfedError` from anywhere in the domain and
one middleware turns it into ``application/problem+json``; the client parses
the same document back into the same exception class, so code on both sides
matches on ``err.problem`` and never on message text.
"""

from __future__ import annotations

import enum
from typing import Any

PROBLEM_BASE = "urn:hashfed:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(enum.Enum):
    """A problem type: (slug, HTTP status, title)."""

    # Request shape
    MALFORMED_REQUEST = ("malformed-request", 400, "The request is malformed")
    BODY_TOO_LARGE = ("body-too-large", 413, "The request body is too large")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "Unsupported media type")
    NOT_FOUND = ("not-found", 404, "Not found")
    METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed")
    CONFLICT = ("conflict", 409, "The request conflicts with the current state")
    RATE_LIMITED = ("rate-limited", 429, "Too many requests")
    INTERNAL = ("internal-error", 500, "Internal server error")
    UNAVAILABLE = ("unavailable", 503, "The service is unavailable")
    # Request authentication (RFC 9421 / RFC 9530)
    SIGNATURE_MISSING = ("signature-missing", 401, "The request is not signed")
    SIGNATURE_MALFORMED = ("signature-malformed", 401, "The request signature is malformed")
    SIGNATURE_INVALID = ("signature-invalid", 401, "The request signature does not verify")
    SIGNATURE_EXPIRED = ("signature-expired", 401, "The request signature is outside the window")
    DIGEST_MISMATCH = ("digest-mismatch", 400, "The body does not match its Content-Digest")
    NONCE_REPLAYED = ("nonce-replayed", 401, "The request nonce was already used")
    UNKNOWN_KEY = ("unknown-key", 401, "The key is not registered")
    KEY_REVOKED = ("key-revoked", 401, "The key is revoked")
    KEY_RETIRED = ("key-retired", 401, "The key is retired")
    ORG_SUSPENDED = ("org-suspended", 403, "The organisation is suspended")
    FORBIDDEN_ROLE = ("forbidden-role", 403, "The organisation lacks the role for this")
    # Statements
    STATEMENT_MALFORMED = ("statement-malformed", 400, "The statement is malformed")
    STATEMENT_NOT_CANONICAL = (
        "statement-not-canonical",
        400,
        "The statement is not RFC 8785 canonical JSON",
    )
    STATEMENT_SIGNATURE_INVALID = (
        "statement-signature-invalid",
        400,
        "The statement signature does not verify",
    )
    STATEMENT_KEY_MISMATCH = (
        "statement-key-mismatch",
        403,
        "The statement is not signed by a key of the requesting organisation",
    )
    STATEMENT_STALE = ("statement-stale", 400, "The statement's created time is out of range")
    STATEMENT_WRONG_TYPE = (
        "statement-wrong-type",
        400,
        "The statement type does not belong at this endpoint",
    )
    # Items of a batch
    INVALID_SIGNAL = ("invalid-signal", 422, "The signal value is invalid for its type")
    UNKNOWN_SIGNAL_TYPE = ("unknown-signal-type", 422, "The signal type is not registered")
    UNKNOWN_LABEL = ("unknown-label", 422, "The label is not in the federation's taxonomy")
    DUPLICATE_ITEM = ("duplicate-item", 422, "The item appears twice in one statement")
    NOT_CONTRIBUTOR = ("not-contributor", 409, "The organisation has no contribution to withdraw")
    # Governance
    INVALID_TRANSITION = ("invalid-transition", 409, "The record's state does not allow this")
    CONFLICT_OF_INTEREST = (
        "conflict-of-interest",
        403,
        "The deciding organisation is a party to the case",
    )

    @property
    def slug(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return int(self.value[1])

    @property
    def title(self) -> str:
        return self.value[2]

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug

    @classmethod
    def from_uri(cls, uri: str) -> Problem | None:
        return _BY_URI.get(uri)


_BY_URI: dict[str, Problem] = {p.uri: p for p in Problem}


class HashfedError(Exception):
    """A refusal with a problem type; the one exception the domain raises for bad input.

    ``extra`` holds problem-specific members (e.g. ``{"errors": [...]}``); it
    is serialised next to the RFC 9457 members.
    """

    def __init__(self, problem: Problem, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.problem = problem
        self.detail = detail
        self.extra = extra

    @property
    def status(self) -> int:
        return self.problem.status

    def to_problem_json(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 document for this error."""
        body: dict[str, Any] = {
            "type": self.problem.uri,
            "title": self.problem.title,
            "status": self.problem.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"HashfedError({self.problem.name}, {self.detail!r})"
