"""The registered model's card: its description, ending with an "Erasure history" section.

The history is rendered from the registry's own version tags every time a version is registered, promoted
or rolled back, so it can never disagree with the registry, and re-rendering is idempotent. It holds
counts, batch IDs, decisions and evidence levels; never a record or request ID.

The *full* history grows by one row per version, so it lives in artifacts (:func:`history_markdown`,
:func:`history_document`); the description carries only the latest versions and the alias holders, with a
pointer to that artifact (:func:`card_description`). MLflow stores a description in a ``VARCHAR(5000)``,
which PostgreSQL enforces: a description that outgrew it made every batch fail after about 27 versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

HEADER = "## Erasure history"
#: What MLflow's SQL store holds in a registered model's description (``VARCHAR(5000)``).
MLFLOW_DESCRIPTION_LIMIT = 5000
#: The card's hard ceiling, in UTF-8 bytes. Bytes are never fewer than characters, so a store that counts
#: either fits; the fifth left over is slack for whatever a store adds.
MAX_CARD_BYTES = 4000
#: The newest versions the card lists (alias holders, however old, come on top): about two weeks of
#: nightly batches, ~2 KB of table.
CARD_VERSIONS = 10
#: Longest cell the card shows (a batch ID is at most 128 characters); longer text, in practice an
#: override reason, is cut there with an ellipsis. The artifact keeps every cell whole.
CARD_CELL_CHARS = 128
_TRUNCATED = "… (truncated)"


@dataclass(frozen=True)
class VersionEntry:
    """One registered version as the card shows it (from its tags)."""

    version: str
    created: str
    role: str
    batch_id: str = ""
    source_version: str = ""
    action: str = ""
    erased_in_batch: int = 0
    erased_total: int = 0
    evidence: str = ""
    gates_passed: str = ""
    override: str = ""
    batch_status: str = ""
    drift: str = ""
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_tags(
        cls, version: str, created: str, tags: Mapping[str, str], aliases: Sequence[str] = ()
    ) -> VersionEntry:
        drift = ""
        if "drift_batches" in tags:
            drift = (
                f"{tags['drift_batches']} batch(es), utility {float(tags.get('drift_utility', 0)):.4f}, "
                f"Σ|AUC gap| {float(tags.get('drift_mia', 0)):.4f}"
            )
        return cls(
            version=str(version),
            created=created,
            role=tags.get("role", ""),
            batch_id=tags.get("batch_id", ""),
            source_version=tags.get("source_version", ""),
            action=tags.get("action", ""),
            erased_in_batch=int(tags.get("erased_in_batch", 0) or 0),
            erased_total=int(tags.get("erased_records", 0) or 0),
            evidence=tags.get("evidence", ""),
            gates_passed=tags.get("gates_passed", ""),
            override=tags.get("evidence_override", ""),
            batch_status=tags.get("batch_status", ""),
            drift=drift,
            aliases=tuple(sorted(aliases)),
        )


def _cell(text: object, limit: int | None = None) -> str:
    value = str(text).replace("\n", " ")
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.replace("|", "\\|") or "-"


def _newest_first(entries: Sequence[VersionEntry]) -> list[VersionEntry]:
    return sorted(entries, key=lambda x: int(x.version) if x.version.isdigit() else 0, reverse=True)


_LEGEND = (
    "Each row is a registered version. *Erased* counts records removed in that batch and in total since "
    "the original; *status* `completed` means the batch closed its requests and issued receipts "
    "(`abandoned` versions come from batches that died before that and must never be promoted). *Gates "
    "passed* is the one verdict (hamu.governance.verdict); an *override* names why a version was promoted on "
    "insufficient evidence."
)
_TABLE_HEAD = [
    "| version | aliases | created | batch | from | action | erased (batch / total) | evidence | "
    "gates passed | override | status | drift since exact retrain |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def erasure_history(entries: Sequence[VersionEntry]) -> str:
    """The Markdown section with every version, newest first (the full history the artifact keeps)."""
    return "\n".join([HEADER, "", _LEGEND, "", *_table(entries)]) + "\n"


def _table(entries: Sequence[VersionEntry], cell_limit: int | None = None) -> list[str]:
    """The history table's lines, newest version first; cells cut at ``cell_limit`` characters if given."""
    lines = list(_TABLE_HEAD)
    for e in _newest_first(entries):
        lines.append(
            "| "
            + " | ".join(
                _cell(x, cell_limit)
                for x in (
                    e.version,
                    ", ".join(e.aliases),
                    e.created,
                    e.batch_id or e.role,
                    e.source_version,
                    e.action or e.role,
                    f"{e.erased_in_batch} / {e.erased_total}",
                    e.evidence,
                    e.gates_passed,
                    e.override,
                    e.batch_status or ("original" if not e.batch_id else ""),
                    e.drift,
                )
            )
            + " |"
        )
    return lines


def with_erasure_history(description: str | None, entries: Sequence[VersionEntry]) -> str:
    """Replace (or append) the card's erasure-history section, keeping whatever precedes it.

    Unbounded (one row per version): for a document with room, not for a registry description; the
    description is :func:`card_description`.
    """
    return _compose(_head(description), erasure_history(entries))


def history_markdown(name: str, entries: Sequence[VersionEntry]) -> str:
    """The full history as a Markdown document (every version), titled with the registered model."""
    return f"# `{name}`\n\n{erasure_history(entries)}"


def history_document(name: str, entries: Sequence[VersionEntry]) -> dict[str, Any]:
    """The full history as JSON-ready data, newest first: what a reviewer's tools read from the artifact."""
    ordered = _newest_first(entries)
    return {
        "registered_model": name,
        "versions": len(ordered),
        "entries": [{**asdict(e), "aliases": list(e.aliases)} for e in ordered],
    }


def card_description(
    description: str | None,
    entries: Sequence[VersionEntry],
    *,
    full_history: str,
    latest: int = CARD_VERSIONS,
    max_bytes: int = MAX_CARD_BYTES,
) -> str:
    """The registry description: what precedes the history section, then a bounded erasure history.

    The section lists the ``latest`` newest versions and the alias holders (``champion``, ``candidate``:
    the versions a reader asks about first, however old), newest first, and says where the full history
    is (``full_history``, e.g. "artifact `x` of MLflow run `y`"). The result never exceeds ``max_bytes``
    UTF-8 bytes, however long the history, the cells or the text above it: versions are dropped oldest
    first (alias holders last), then the text above the section is cut, then, as a last resort, the whole.
    Idempotent, like :func:`with_erasure_history`: the stored description can be passed back in.
    """
    if latest < 0 or max_bytes < len(_TRUNCATED.encode()):
        raise ValueError(f"latest must be >= 0 and max_bytes room for a note, got {latest}, {max_bytes}")
    ordered = _newest_first(entries)
    held = [e for e in ordered if e.aliases]
    priority = held + [e for e in ordered[:latest] if not e.aliases]  # dropped from the end when too long
    head = _head(description)
    for keep in range(len(priority), -1, -1):
        section = _bounded_section(_newest_first(priority[:keep]), len(ordered), full_history)
        text = _compose(head, section)
        if _size(text) <= max_bytes:
            return text
    room = max_bytes - _size(section) - len(b"\n\n") - len(_TRUNCATED.encode())
    if room > 0:
        return _compose(_clip(head, room).rstrip() + _TRUNCATED, section)
    return _clip(section, max_bytes - len(_TRUNCATED.encode())) + _TRUNCATED


def _bounded_section(shown: Sequence[VersionEntry], total: int, full_history: str) -> str:
    what = f"All {total} versions" if len(shown) == total else f"{len(shown)} of {total} versions: the newest"
    what += " and every alias holder" if len(shown) < total else ""
    lines = [HEADER, "", f"{what}. Full history: {full_history}.", "", _LEGEND, ""]
    return "\n".join([*lines, *_table(shown, CARD_CELL_CHARS)]) + "\n"


def _head(description: str | None) -> str:
    """The description above its history section (a curator's intro), without trailing space."""
    return (description or "").split(HEADER, 1)[0].rstrip()


def _compose(head: str, section: str) -> str:
    return f"{head}\n\n{section}" if head else section


def _size(text: str) -> int:
    return len(text.encode())


def _clip(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits ``max_bytes`` UTF-8 bytes (never half a character)."""
    return text.encode()[: max(max_bytes, 0)].decode("utf-8", "ignore")
