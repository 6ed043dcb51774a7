"""The model card stays under MLflow's 5,000-character description limit however long the history grows; the
full erasure history lives in run artifacts (Markdown and JSON), with every version.

Pure rendering tests, then ``refresh_model_card`` against a real MLflow store (SQLite; it does not enforce
the VARCHAR(5000) that PostgreSQL does, so the length is asserted directly).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamu.governance.audit.model_card import (
    CARD_VERSIONS,
    HEADER,
    MAX_CARD_BYTES,
    MLFLOW_DESCRIPTION_LIMIT,
    VersionEntry,
    card_description,
    history_document,
    history_markdown,
)

POINTER = "`runs:/0123456789abcdef/model_card/erasure_history.md`"


def entry(
    version: int, *, aliases: tuple[str, ...] = (), override: str = "", batch: str = ""
) -> VersionEntry:
    """A registered version as the pipeline tags it (the widest realistic row: drift, gates, evidence)."""
    tags = {
        "role": "candidate",
        "batch_id": batch or f"b20260301T000000-{version:06x}",
        "source_version": str(version - 1),
        "action": "unlearn",
        "erased_in_batch": "500",
        "erased_records": str(500 * version),
        "evidence": "adequate",
        "gates_passed": "14/14",
        "batch_status": "completed",
        "drift_batches": "3",
        "drift_utility": "0.0123",
        "drift_mia": "0.0456",
    }
    if override:
        tags["evidence_override"] = override
    return VersionEntry.from_tags(str(version), "2026-03-01 12:00", tags, aliases)


def history(n: int, champion: int = 7) -> list[VersionEntry]:
    """``n`` versions, newest ``candidate``, an old ``champion`` (promotions lag behind candidates)."""
    out = [VersionEntry.from_tags("1", "2026-01-01 00:00", {"role": "original"}, ["legacy"])]
    for v in range(2, n + 1):
        aliases = ("candidate",) if v == n else ("champion",) if v == champion else ()
        out.append(entry(v, aliases=aliases))
    return out


def rows(text: str) -> list[str]:
    """The version column of every table row of a rendered history."""
    return [
        line.split("|")[1].strip()
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    ][1:]


# --------------------------------------------------------------------------- rendering


def test_two_hundred_versions_fit_the_card_and_all_are_in_the_artifact() -> None:
    entries = history(200)
    card = card_description("Fashion-MNIST MLP served to the shop.", entries, full_history=POINTER)
    assert len(card) < MLFLOW_DESCRIPTION_LIMIT and len(card.encode()) <= MAX_CARD_BYTES
    shown = rows(card)
    newest = [str(v) for v in range(200, 200 - CARD_VERSIONS, -1)]
    assert shown == [*newest, "7", "1"]  # the newest, then the alias holders however old, newest first
    assert card.startswith("Fashion-MNIST MLP served to the shop.\n\n" + HEADER)
    assert "12 of 200 versions" in card and POINTER in card and card.count(HEADER) == 1

    full = history_markdown("hamu-fashion", entries)
    assert rows(full) == [str(v) for v in range(200, 0, -1)]
    doc = history_document("hamu-fashion", entries)
    assert doc["versions"] == 200 and [e["version"] for e in doc["entries"]] == [
        str(v) for v in range(200, 0, -1)
    ]
    assert doc["entries"][-1]["aliases"] == ["legacy"]
    json.dumps(doc)  # JSON-ready


def test_a_short_history_is_shown_whole() -> None:
    entries = history(4, champion=3)
    card = card_description(None, entries, full_history=POINTER)
    assert rows(card) == ["4", "3", "2", "1"] and "All 4 versions" in card


@pytest.mark.parametrize(
    "intro",
    ["", "short intro", "é" * 6000, "x" * 20_000 + HEADER + "old history", "| pipe |\n" * 900],
    ids=["none", "short", "long-multibyte", "long-with-old-section", "many-lines"],
)
def test_the_card_is_bounded_whatever_the_input(intro: str) -> None:
    """Long overrides, hundreds of aliases, a huge intro: never over the ceiling, never half a character."""
    entries = history(300)
    entries[150] = entry(151, override="ü" * 3000, aliases=tuple(f"alias-{i}" for i in range(400)))
    entries.append(entry(301, override="promoted on insufficient evidence: " + "why " * 500, batch="b" * 128))
    card = card_description(intro, entries, full_history=POINTER)
    assert len(card.encode()) <= MAX_CARD_BYTES < MLFLOW_DESCRIPTION_LIMIT
    card.encode().decode("utf-8")  # whole characters only
    assert HEADER in card and POINTER in card
    assert (
        card_description(card, entries, full_history=POINTER) == card
    )  # idempotent: the stored card back in


def test_random_histories_never_exceed_the_ceiling() -> None:
    rng = random.Random(15)
    for _ in range(40):
        n = rng.randrange(0, 400)
        entries = [
            entry(v, override="o" * rng.randrange(0, 400), aliases=("a",) * rng.randrange(0, 3))
            for v in range(1, n + 1)
        ]
        intro = "i" * rng.randrange(0, 6000)
        limit = rng.randrange(200, 5000)
        card = card_description(
            intro, entries, full_history=POINTER, latest=rng.randrange(0, 30), max_bytes=limit
        )
        assert len(card.encode()) <= limit


def test_card_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="latest"):
        card_description("", history(3), full_history=POINTER, latest=-1)
    with pytest.raises(ValueError, match="max_bytes"):
        card_description("", history(3), full_history=POINTER, max_bytes=3)


# --------------------------------------------------------------------------- refresh_model_card on MLflow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private MLflow backend store, SQLite or a throwaway PostgreSQL database (which, unlike SQLite,
    enforces the 5,000-character description column); the process-wide tracking URI is restored."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    if request.param == "postgresql":
        uri = request.getfixturevalue("postgres_url")
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(previous)


def test_refresh_keeps_the_description_short_and_logs_the_full_history(store: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from hamu_pipeline.tasks.registration import (
        HISTORY_ARTIFACT,
        HISTORY_JSON_ARTIFACT,
        HISTORY_TAG,
        refresh_model_card,
    )

    client = MlflowClient()
    experiment = client.create_experiment("cards", artifact_location=(store / "artifacts").as_uri())
    runs = [client.create_run(experiment).info.run_id for _ in range(4)]
    name = "hamu-card"
    client.create_registered_model(name)
    for v in range(1, 201):
        tags = {"batch_id": f"b20260301T000000-{v:06x}", "erased_records": str(500 * v), "action": "unlearn"}
        tags |= {"batch_status": "completed", "evidence": "adequate", "gates_passed": "14/14"}
        tags |= {"drift_batches": "3", "drift_utility": "0.01", "drift_mia": "0.05", "erased_in_batch": "500"}
        client.create_model_version(name, source=(store / "src").as_uri(), run_id=runs[v % 4], tags=tags)
    client.set_registered_model_alias(name, "champion", "7")
    client.set_registered_model_alias(name, "candidate", "200")

    card = refresh_model_card(name)
    stored = client.get_registered_model(name)
    assert stored.description == card
    assert len(card) < MLFLOW_DESCRIPTION_LIMIT and len(card.encode()) <= MAX_CARD_BYTES
    newest_run = runs[200 % 4]
    uri = f"runs:/{newest_run}/{HISTORY_ARTIFACT}"
    assert stored.tags[HISTORY_TAG] == uri and uri in card
    assert rows(card)[:2] == ["200", "199"] and "7" in rows(card)

    full = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(store / "dl"))).read_text()
    assert rows(full) == [str(v) for v in range(200, 0, -1)]
    assert "| champion |" in full and "| candidate |" in full
    doc = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=newest_run, artifact_path=HISTORY_JSON_ARTIFACT, dst_path=str(store / "j")
            )
        ).read_text()
    )
    assert doc["registered_model"] == name and doc["versions"] == 200 and len(doc["entries"]) == 200

    assert refresh_model_card(name) == card  # re-rendering changes nothing


def test_the_postgresql_store_refuses_what_the_card_bound_prevents(postgres_url: str) -> None:
    """Why the bound matters: MLflow on PostgreSQL stores the description in a 5,000-character column, so an
    unbounded erasure history made every batch fail there once it grew past it (SQLite never complained)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(postgres_url)
    try:
        client = MlflowClient()
        client.create_registered_model("hamu-pg")
        client.update_registered_model("hamu-pg", description="x" * (MLFLOW_DESCRIPTION_LIMIT - 1))
        with pytest.raises(MlflowException):
            client.update_registered_model("hamu-pg", description="x" * (MLFLOW_DESCRIPTION_LIMIT + 1))
    finally:
        mlflow.set_tracking_uri(previous)
