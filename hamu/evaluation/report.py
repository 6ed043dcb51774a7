"""The evaluation report (aggregates only, JSON-serialisable) and the in-memory per-example scores.

Two objects on purpose. An audit trail must show *that* the forget rows were forgotten without becoming a
copy of them, so :class:`EvaluationReport` carries counts, digests and aggregates only: never a record ID,
never a row, never a per-example score. Per-example values (needed for plots and for per-request analysis)
live in :class:`PerExampleScores`, in memory, and reach disk only through :meth:`PerExampleScores.save` into a
directory the caller names: a deletable working area, not the audit store.

Record IDs, when a caller has them, are reduced here to a count and a digest (HMAC-SHA256 with a caller-held
key, or plain SHA-256 with a weaker label), and the serialised report is checked to contain none of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hamu.evaluation.attacks import attack_score
from hamu.evaluation.per_example import PerExample

SCHEMA = (
    "hamu.evaluation/2"  # /2: no verdicts in the report (hamu.governance.verdict decides), utility_drop added
)
JSONScalar = str | int | float | bool | None


class RecordIdLeakError(ValueError):
    """The serialised report would contain a raw record ID (e.g. through caller metadata or a model name)."""


def digest_ids(ids: Iterable[str], *, key: bytes | None = None) -> str:
    """An order-independent digest of a set of record IDs, labelled with its algorithm.

    With ``key`` it is HMAC-SHA256, so nobody without the key can confirm a guessed ID set (guessable IDs such
    as "digits-train-000123" make a plain hash of a small set brute-forceable); without a key it is SHA-256
    and labelled ``sha256:`` so a reader knows which it is.
    """
    body = "\n".join(sorted(str(i) for i in ids)).encode("utf-8")
    if key is not None:
        return "hmac-sha256:" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return "sha256:" + hashlib.sha256(body).hexdigest()


MIN_CHECKED_ID_LENGTH = 6


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _strings(v)


def assert_free_of_ids(report: Mapping[str, Any], ids: Iterable[str]) -> None:
    """Raise :class:`RecordIdLeakError` if any ID occurs in a string (key or value) of ``report``.

    The check walks the decoded structure rather than the JSON text, so escaped non-ASCII IDs are still
    found, and numbers are not searched. IDs shorter than 6 characters are skipped: they collide with class
    labels and metric names ("3", "auc") and cannot be checked meaningfully. The error never echoes an ID.
    """
    wanted = {str(i) for i in ids if len(str(i)) >= MIN_CHECKED_ID_LENGTH}
    if not wanted:
        return
    texts = list(_strings(report))
    leaked = sum(1 for i in wanted if any(i in t for t in texts))
    if leaked:
        raise RecordIdLeakError(
            f"{leaked} record ID(s) would appear in the report (check metadata, digests and model names)"
        )


@dataclass
class EvaluationReport:
    """Aggregates of one evaluation of original / reference / candidate models. See docs/evaluation.md."""

    models: dict[str, str]
    reference: dict[str, Any]
    counts: dict[str, int]
    config: dict[str, Any]
    utility: dict[str, Any]
    attacks: dict[str, Any]
    shadow: dict[str, Any]
    forget_quality: dict[str, Any]
    gaps: dict[str, list[dict[str, Any]]]
    utility_drop: dict[str, dict[str, float]]
    detection_floor: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, JSONScalar] = field(default_factory=dict)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema": self.schema,
            "models": self.models,
            "reference": self.reference,
            "counts": self.counts,
            "digests": self.digests,
            "metadata": self.metadata,
            "config": self.config,
            "utility": self.utility,
            "attacks": self.attacks,
            "shadow": self.shadow,
            "forget_quality": self.forget_quality,
            "gaps": self.gaps,
            "utility_drop": self.utility_drop,
            "detection_floor": self.detection_floor,
            "warnings": self.warnings,
        }
        return json.loads(json.dumps(out, allow_nan=False))  # a deep, plain-JSON copy

    def to_json(self, *, indent: int | None = 2) -> str:
        """Strict JSON (NaN/Inf are an error, not a silently invalid file)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    def write(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_text(self.to_json() + "\n", encoding="utf-8")
        return target


@dataclass
class PerExampleScores:
    """Per-example outputs of every (model, split), plus LiRA scores; in memory unless the caller saves them.

    ``outputs[model][split]`` is a :class:`PerExample`; ``lira[model][split]`` the offline-LiRA score of each
    forget/test row (absent when the shadow attack was not run).
    """

    outputs: dict[str, dict[str, PerExample]]
    lira: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.outputs)

    def scores(self, model: str, split: str, attack: str) -> np.ndarray:
        """Attack scores (higher = member) of one model on one split; ``attack`` may be ``lira``."""
        if model not in self.outputs:
            raise KeyError(f"no model {model!r}; have {self.models}")
        if attack == "lira":
            if model not in self.lira or split not in self.lira[model]:
                raise KeyError(f"no LiRA scores for model {model!r} on split {split!r}")
            return self.lira[model][split]
        if split not in self.outputs[model]:
            raise KeyError(f"no split {split!r} for model {model!r}; have {sorted(self.outputs[model])}")
        return attack_score(self.outputs[model][split], attack)

    def save(self, directory: str | Path) -> list[Path]:
        """Write one ``<model>.npz`` per model into ``directory`` (the caller's deletable working area).

        Arrays are positional (row i of each split); no record IDs are written.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        names = {model: _safe_name(model) for model in self.outputs}
        if len(set(names.values())) != len(names):
            raise ValueError(f"model names collide as file names: {sorted(names.values())}")
        written = []
        for model, splits in self.outputs.items():
            arrays: dict[str, np.ndarray] = {}
            for split, pe in splits.items():
                for name in (
                    "targets",
                    "predictions",
                    "loss",
                    "confidence",
                    "entropy",
                    "modified_entropy",
                    "phi",
                    "correct",
                ):
                    arrays[f"{split}.{name}"] = getattr(pe, name)
            for split, values in self.lira.get(model, {}).items():
                arrays[f"{split}.lira"] = values
            path = root / f"{names[model]}.npz"
            np.savez(path, **arrays)  # type: ignore[arg-type]
            written.append(path)
        return written


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned or "model"


def jsonable_metadata(metadata: Mapping[str, Any] | None) -> dict[str, JSONScalar]:
    """Caller metadata restricted to JSON scalars, so the report stays flat and inspectable."""
    out: dict[str, JSONScalar] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str):
            raise ValueError(f"metadata keys must be strings, got {k!r}")
        if v is not None and not isinstance(v, str | int | float | bool):
            raise ValueError(f"metadata value for {k!r} must be a JSON scalar, got {type(v).__name__}")
        if isinstance(v, float) and not np.isfinite(v):
            raise ValueError(f"metadata value for {k!r} is not finite")
        out[k] = v
    return out
