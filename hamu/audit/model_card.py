"""The registered model's card: its description, ending with an "Erasure history" section.

The history is rendered from the registry's own version tags every time a version is registered, promoted
or rolled back, so it can never disagree with the registry, and re-rendering is idempotent. It holds
counts, batch IDs, decisions and evidence levels; never a record or request ID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HEADER = "## Erasure history"


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


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") or "-"


def erasure_history(entries: Sequence[VersionEntry]) -> str:
    """The Markdown section, newest version first."""
    lines = [
        HEADER,
        "",
        "Each row is a registered version. *Erased* counts records removed in that batch and in total since "
        "the original; *status* `completed` means the batch closed its requests and issued receipts "
        "(`abandoned` versions come from batches that died before that and must never be promoted). *Gates "
        "passed* is the one verdict (hamu.verdict); an *override* names why a version was promoted on "
        "insufficient evidence.",
        "",
        "| version | aliases | created | batch | from | action | erased (batch / total) | evidence | "
        "gates passed | override | status | drift since exact retrain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in sorted(entries, key=lambda x: int(x.version) if x.version.isdigit() else 0, reverse=True):
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
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
    return "\n".join(lines) + "\n"


def with_erasure_history(description: str | None, entries: Sequence[VersionEntry]) -> str:
    """Replace (or append) the card's erasure-history section, keeping whatever precedes it."""
    head = (description or "").split(HEADER, 1)[0].rstrip()
    section = erasure_history(entries)
    return f"{head}\n\n{section}" if head else section
