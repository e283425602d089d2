"""Client-side errors: one exception class per server problem type.

Every class derives from :class:`FederationError` (itself a
``HashfedError``), so callers can catch broadly or precisely::

    try:
        await client.submit(items)
    except KeyRevoked:
        ...rotate...
    except FederationError as err:
        print(err.problem.uri, err.detail)
"""

from __future__ import annotations

from typing import Any

from federation.protocol.problems import HashfedError, Problem


class FederationError(HashfedError):
    """A refusal or failure reported by the federation server (RFC 9457 problem)."""

    def __init__(self, problem: Problem, detail: str, *, status: int | None = None, **extra: Any):
        super().__init__(problem, detail, **extra)
        self.http_status = status if status is not None else problem.status


class TransportError(FederationError):
    """The server could not be reached or kept failing after every retry."""

    def __init__(self, detail: str) -> None:
        super().__init__(Problem.UNAVAILABLE, detail)


class MalformedRequest(FederationError): ...


class BodyTooLarge(FederationError): ...


class UnsupportedMediaType(FederationError): ...


class NotFound(FederationError): ...


class MethodNotAllowed(FederationError): ...


class Conflict(FederationError): ...


class RateLimited(FederationError): ...


class ServerError(FederationError): ...


class Unavailable(FederationError): ...


class SignatureMissing(FederationError): ...


class SignatureMalformed(FederationError): ...


class SignatureInvalid(FederationError): ...


class SignatureExpired(FederationError): ...


class DigestMismatch(FederationError): ...


class NonceReplayed(FederationError): ...


class UnknownKey(FederationError): ...


class KeyRevoked(FederationError): ...


class KeyRetired(FederationError): ...


class OrgSuspended(FederationError): ...


class ForbiddenRole(FederationError): ...


class StatementMalformed(FederationError): ...


class StatementNotCanonical(FederationError): ...


class StatementSignatureInvalid(FederationError): ...


class StatementKeyMismatch(FederationError): ...


class StatementStale(FederationError): ...


class StatementWrongType(FederationError): ...


class InvalidSignal(FederationError): ...


class UnknownSignalType(FederationError): ...


class UnknownLabel(FederationError): ...


class DuplicateItem(FederationError): ...


class NotContributor(FederationError): ...


class InvalidTransition(FederationError): ...


class ConflictOfInterest(FederationError): ...


ERROR_CLASSES: dict[Problem, type[FederationError]] = {
    Problem.MALFORMED_REQUEST: MalformedRequest,
    Problem.BODY_TOO_LARGE: BodyTooLarge,
    Problem.UNSUPPORTED_MEDIA_TYPE: UnsupportedMediaType,
    Problem.NOT_FOUND: NotFound,
    Problem.METHOD_NOT_ALLOWED: MethodNotAllowed,
    Problem.CONFLICT: Conflict,
    Problem.RATE_LIMITED: RateLimited,
    Problem.INTERNAL: ServerError,
    Problem.UNAVAILABLE: Unavailable,
    Problem.SIGNATURE_MISSING: SignatureMissing,
    Problem.SIGNATURE_MALFORMED: SignatureMalformed,
    Problem.SIGNATURE_INVALID: SignatureInvalid,
    Problem.SIGNATURE_EXPIRED: SignatureExpired,
    Problem.DIGEST_MISMATCH: DigestMismatch,
    Problem.NONCE_REPLAYED: NonceReplayed,
    Problem.UNKNOWN_KEY: UnknownKey,
    Problem.KEY_REVOKED: KeyRevoked,
    Problem.KEY_RETIRED: KeyRetired,
    Problem.ORG_SUSPENDED: OrgSuspended,
    Problem.FORBIDDEN_ROLE: ForbiddenRole,
    Problem.STATEMENT_MALFORMED: StatementMalformed,
    Problem.STATEMENT_NOT_CANONICAL: StatementNotCanonical,
    Problem.STATEMENT_SIGNATURE_INVALID: StatementSignatureInvalid,
    Problem.STATEMENT_KEY_MISMATCH: StatementKeyMismatch,
    Problem.STATEMENT_STALE: StatementStale,
    Problem.STATEMENT_WRONG_TYPE: StatementWrongType,
    Problem.INVALID_SIGNAL: InvalidSignal,
    Problem.UNKNOWN_SIGNAL_TYPE: UnknownSignalType,
    Problem.UNKNOWN_LABEL: UnknownLabel,
    Problem.DUPLICATE_ITEM: DuplicateItem,
    Problem.NOT_CONTRIBUTOR: NotContributor,
    Problem.INVALID_TRANSITION: InvalidTransition,
    Problem.CONFLICT_OF_INTEREST: ConflictOfInterest,
}


def error_from_problem(document: dict[str, Any], status: int) -> FederationError:
    """The typed exception for a problem+json document received with ``status``."""
    problem = Problem.from_uri(str(document.get("type", "")))
    detail = str(document.get("detail") or document.get("title") or f"HTTP {status}")
    extra = {k: v for k, v in document.items() if k not in {"type", "title", "status", "detail"}}
    if problem is None:
        problem = Problem.INTERNAL if status >= 500 else Problem.MALFORMED_REQUEST
        extra["unknown_type"] = document.get("type")
    return ERROR_CLASSES[problem](problem, detail, status=status, **extra)
