"""The labels a record can carry: a taxonomy the federation configures.

Labels describe what the content does (behaviour-based), not who made it, in
the manner of the cross-industry hash-sharing taxonomies; ``incident`` marks
content of a declared crisis (an attack being live-streamed or spread, for
which members activate their crisis protocol). A federation may configure
its own :class:`Taxonomy`; :data:`DEFAULT_TAXONOMY` is the one it starts with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from federation.protocol.problems import HashfedError, Problem

DEFAULT_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "imminent_credible_threat": (
            "a credible, specific threat of violence against people or places, stated as imminent"
        ),
        "graphic_violence_against_defenceless": (
            "depiction of graphic violence against defenceless people "
            "(hostages, prisoners, civilians)"
        ),
        "glorification": (
            "glorifies, praises or celebrates terrorist or violent extremist acts "
            "or their perpetrators"
        ),
        "recruitment": "seeks to recruit people into a terrorist or violent extremist group",
        "instruction": (
            "instructs in committing terrorist or violent extremist acts "
            "(weapons, explosives, attack planning)"
        ),
        "incident": "content of a declared crisis incident (e.g. an attack's live stream)",
    }
)

# Lower-case words joined by underscores: stable in URLs, JSON and SQL.
_LABEL_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
MAX_LABEL_NAME_CHARS = 64
# An error names at most this many unknown labels, so its size stays bounded.
_MAX_NAMED_UNKNOWN = 10


@dataclass(frozen=True)
class Taxonomy:
    """A set of labels, each with a one-line description.

    Raises ``ValueError`` at construction for a configuration mistake: no
    labels, or a name that is not lower-case words joined by underscores.
    """

    labels: Mapping[str, str]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a taxonomy needs at least one label")
        for name in self.labels:
            if len(name) > MAX_LABEL_NAME_CHARS or _LABEL_NAME.fullmatch(name) is None:
                raise ValueError(
                    f"label name {name!r} must be lower-case words joined by '_' "
                    f"(at most {MAX_LABEL_NAME_CHARS} characters)"
                )
        # A private, sorted, read-only copy: later changes to the caller's
        # mapping cannot alter a taxonomy in use.
        object.__setattr__(self, "labels", MappingProxyType(dict(sorted(self.labels.items()))))

    def __reduce__(self) -> tuple[type[Taxonomy], tuple[dict[str, str]]]:
        # Pickled (to a helper process) as its labels: a read-only mapping does not pickle.
        return Taxonomy, (dict(self.labels),)

    def validate(self, labels: Sequence[str]) -> tuple[str, ...]:
        """The labels, each known, sorted and de-duplicated.

        Raises ``HashfedError``: ``MALFORMED_REQUEST`` if there is no label or
        ``labels`` is a single string or holds a non-string; ``UNKNOWN_LABEL``
        naming every label not in the taxonomy and listing the known ones.
        """
        if isinstance(labels, str):
            raise HashfedError(
                Problem.MALFORMED_REQUEST,
                f"labels must be a list of label names, got the string {_show(labels)}",
            )
        if not labels:
            raise HashfedError(
                Problem.MALFORMED_REQUEST,
                f"at least one label is required; known labels: {self._known()}",
            )
        for label in labels:
            if not isinstance(label, str):
                raise HashfedError(
                    Problem.MALFORMED_REQUEST,
                    f"each label must be a string, got {type(label).__name__}",
                )
        unique = sorted(set(labels))
        unknown = [label for label in unique if label not in self.labels]
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            named = ", ".join(_show(label) for label in unknown[:_MAX_NAMED_UNKNOWN])
            if len(unknown) > _MAX_NAMED_UNKNOWN:
                named += f" and {len(unknown) - _MAX_NAMED_UNKNOWN} more"
            raise HashfedError(
                Problem.UNKNOWN_LABEL,
                f"unknown label{plural} {named}; known labels: {self._known()}",
            )
        return tuple(unique)

    def _known(self) -> str:
        return ", ".join(self.labels)


def _show(label: str) -> str:
    return repr(label) if len(label) <= 40 else f"{label[:40]!r}…"


DEFAULT_TAXONOMY = Taxonomy(DEFAULT_LABELS)
