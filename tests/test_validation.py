"""Validation of deletion batches, with the real GX suite from expectations/."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hamu.governance.requests import (
    RECORD_ID_PATTERN,
    REQUEST_ID_PATTERN,
    Reason,
    RequestQueue,
    Status,
    default_queue_url,
)
from hamu_pipeline.tasks.validation import (
    EXPECTATIONS_DIR,
    build_suite,
    load_suite_spec,
    requests_frame,
    validate_requests,
)

MANIFEST = pd.Series([f"rec-{i}" for i in range(100)], name="record_id")


def frame(*rows: tuple[Any, Any, Any, Any]) -> pd.DataFrame:
    """A requests frame from ``(request_id, record_id, reason, received_at)`` tuples."""
    return pd.DataFrame(rows, columns=["request_id", "record_id", "reason", "received_at"], dtype=object)


def ts(day: int) -> str:
    """An ISO 8601 UTC timestamp on the given day of January 2026."""
    return f"2026-01-{day:02d}T00:00:00Z"


def gx_unexpected(result: dict[str, Any], type_: str, column: str) -> int:
    """The unexpected_count GX reported for one expectation."""
    for item in result["results"]:
        config = item["expectation_config"]
        if config["type"] == type_ and config["kwargs"].get("column") == column:
            return int(item["result"]["unexpected_count"])
    raise AssertionError(f"{type_}({column}) not in the result")


@pytest.fixture(scope="module")
def mixed() -> Any:
    """One batch that produces every verdict, validated once for several tests."""
    df = frame(
        ("r-ok", "rec-1", "privacy", ts(1)),
        ("r-unknown", "rec-999", "copyright", ts(2)),
        ("r-malformed", "REC-2", "bias", ts(3)),
        ("r-dup-late", "rec-3", "privacy", ts(9)),
        ("r-dup-early", "rec-3", "other", ts(4)),
        ("r-erased", "rec-4", "privacy", ts(5)),
        ("r-erased-and-unknown", "gone-1", "privacy", ts(6)),
        ("r-bad-reason", "rec-5", "gdpr", ts(7)),
        ("r-naive", "rec-6", "privacy", "2026-01-08T00:00:00"),
        ("r-unknown-twice-a", "rec-777", "privacy", ts(10)),
        ("r-unknown-twice-b", "rec-777", "privacy", ts(11)),
    )
    return validate_requests(df, MANIFEST, {"rec-4", "gone-1"})


def test_every_request_gets_exactly_one_verdict_in_input_order(mixed: Any) -> None:
    v = mixed.verdicts
    assert list(v.columns) == ["request_id", "record_id", "verdict", "reason"]
    assert v["request_id"].tolist()[:3] == ["r-ok", "r-unknown", "r-malformed"]
    assert len(v) == 11
    assert v["verdict"].notna().all() and v["reason"].map(lambda r: isinstance(r, str) and r != "").all()
    got = dict(zip(v["request_id"], v["verdict"], strict=True))
    assert got == {
        "r-ok": "accepted",
        "r-unknown": "unknown",
        "r-malformed": "malformed",
        "r-dup-late": "duplicate",
        "r-dup-early": "accepted",
        "r-erased": "already-erased",
        "r-erased-and-unknown": "already-erased",
        "r-bad-reason": "malformed",
        "r-naive": "malformed",
        "r-unknown-twice-a": "unknown",
        "r-unknown-twice-b": "unknown",
    }
    assert mixed.counts() == {
        "accepted": 2,
        "unknown": 3,
        "malformed": 3,
        "duplicate": 1,
        "already-erased": 2,
    }


def test_reasons_say_why(mixed: Any) -> None:
    why = dict(zip(mixed.verdicts["request_id"], mixed.verdicts["reason"], strict=True))
    assert why["r-unknown"] == "record ID not in the training manifest"
    assert why["r-dup-late"] == "record also requested by earlier request r-dup-early in this batch"
    assert why["r-erased"] == "record ID already erased by an earlier request"
    assert why["r-malformed"] == f"record_id 'REC-2' does not match {RECORD_ID_PATTERN}"
    assert why["r-bad-reason"].startswith("reason 'gdpr' is not one of privacy")
    assert (
        why["r-naive"] == "received_at '2026-01-08T00:00:00' is not an ISO 8601 timestamp with a UTC offset"
    )


def test_gx_result_fails_and_agrees_with_the_pandas_verdicts(mixed: Any) -> None:
    result = mixed.gx_result
    assert mixed.success is False and result["success"] is False
    assert set(result) >= {"results", "statistics", "success", "suite_name", "meta"}
    assert result["suite_name"] == "deletion_request"
    assert result["meta"]["suite_sha256"] == mixed.suite.suite_sha256
    failed = set(mixed.suite.failed_expectations())
    assert failed == {
        "expect_column_values_to_match_regex(record_id)",
        "expect_column_values_to_be_in_set(reason)",
        "expect_column_values_to_not_be_null(received_at)",
        "expect_column_values_to_be_in_set(in_manifest)",
        "expect_column_values_to_be_in_set(not_already_erased)",
        "expect_column_values_to_be_in_set(first_for_record)",
    }
    # Membership is computed in pandas; GX counts the same rows: rec-999, REC-2, gone-1, rec-777 twice.
    in_set = "expect_column_values_to_be_in_set"
    assert gx_unexpected(result, in_set, "in_manifest") == 5
    assert gx_unexpected(result, in_set, "not_already_erased") == 2
    assert gx_unexpected(result, in_set, "first_for_record") == 1
    assert gx_unexpected(result, "expect_column_values_to_match_regex", "record_id") == 1
    assert gx_unexpected(result, "expect_column_values_to_not_be_null", "received_at") == 1
    json.dumps(result)  # a JSON-ready artifact


def test_gx_result_holds_counts_not_record_ids(mixed: Any) -> None:
    text = json.dumps(mixed.gx_result)
    for record_id in ("rec-999", "REC-2", "gone-1", "rec-777", "rec-3"):
        assert record_id not in text


def test_clean_batch_passes_the_suite() -> None:
    outcome = validate_requests(
        frame(("a-1", "rec-1", "privacy", ts(1)), ("a-2", "rec-2", "bias", ts(2))), MANIFEST, set()
    )
    assert outcome.success is True
    assert outcome.suite.failed_expectations() == []
    assert outcome.counts()["accepted"] == 2
    assert outcome.gx_result["statistics"]["unsuccessful_expectations"] == 0
    assert outcome.verdict_map() == {
        "a-1": ("accepted", "record ID in the training manifest, not erased, first request in this batch"),
        "a-2": ("accepted", "record ID in the training manifest, not erased, first request in this batch"),
    }


def test_repeated_request_id_and_nulls_are_reported() -> None:
    outcome = validate_requests(
        frame(
            ("a-1", "rec-1", "privacy", ts(2)),
            ("a-1", "rec-2", "privacy", ts(1)),
            (None, "rec-3", "privacy", ts(1)),
            ("a-4", None, "privacy", ts(1)),
        ),
        MANIFEST,
        set(),
    )
    got = outcome.verdicts["verdict"].tolist()
    assert got == ["duplicate", "accepted", "malformed", "malformed"]  # the earlier-received a-1 is kept
    assert outcome.verdicts["reason"][0] == "request_id repeated in this batch; first occurrence kept"
    assert "expect_column_values_to_be_unique(request_id)" in outcome.suite.failed_expectations()
    assert "expect_column_values_to_not_be_null(request_id)" in outcome.suite.failed_expectations()
    with pytest.raises(ValueError, match="repeated"):
        outcome.verdict_map()


def test_duplicate_order_follows_received_at_then_position() -> None:
    outcome = validate_requests(
        frame(
            ("late", "rec-1", "privacy", "2026-01-01T12:00:00+00:00"),
            ("early", "rec-1", "privacy", "2026-01-01T13:00:00+02:00"),  # 11:00 UTC
            ("tie-a", "rec-2", "privacy", ts(1)),
            ("tie-b", "rec-2", "privacy", ts(1)),
        ),
        MANIFEST,
        set(),
    )
    assert outcome.verdicts["verdict"].tolist() == ["duplicate", "accepted", "accepted", "duplicate"]


def test_set_and_series_manifests_agree(mixed: Any) -> None:
    df = frame(("x-1", "rec-1", "privacy", ts(1)), ("x-2", "rec-500", "privacy", ts(1)))
    a = validate_requests(df, MANIFEST, set()).verdicts
    b = validate_requests(df, set(MANIFEST), set()).verdicts
    c = validate_requests(df, MANIFEST.astype("str"), set()).verdicts
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert a["verdict"].tolist() == ["accepted", "unknown"]


def test_empty_batch_fails_the_row_count() -> None:
    outcome = validate_requests(frame(), MANIFEST, set())
    assert len(outcome.verdicts) == 0
    assert outcome.success is False
    assert outcome.suite.failed_expectations() == ["expect_table_row_count_to_be_between"]


def test_missing_columns_are_a_caller_error() -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['reason'\]"):
        validate_requests(
            pd.DataFrame({"request_id": ["a"], "record_id": ["b"], "received_at": [ts(1)]}), MANIFEST, set()
        )


def test_suites_are_loaded_from_json_at_run_time(tmp_path: Path) -> None:
    shutil.copy(EXPECTATIONS_DIR / "deletion_request.json", tmp_path / "deletion_request.json")
    doc = json.loads((tmp_path / "deletion_request.json").read_text())
    for exp in doc["expectations"]:
        if exp["type"] == "expect_table_row_count_to_be_between":
            exp["kwargs"]["max_value"] = 1
    (tmp_path / "deletion_request.json").write_text(json.dumps(doc))
    df = frame(("a-1", "rec-1", "privacy", ts(1)), ("a-2", "rec-2", "bias", ts(2)))
    assert validate_requests(df, MANIFEST, set()).success is True
    edited = validate_requests(df, MANIFEST, set(), suites_dir=tmp_path)
    assert edited.success is False
    assert edited.suite.failed_expectations() == ["expect_table_row_count_to_be_between"]
    assert edited.suite.suite_sha256 != load_suite_spec("deletion_request").sha256


def test_broken_suite_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "deletion_request.json").write_text(json.dumps({"name": "other", "expectations": []}))
    with pytest.raises(ValueError, match="does not match the file name"):
        load_suite_spec("deletion_request", suites_dir=tmp_path)
    (tmp_path / "deletion_request.json").write_text(
        json.dumps({"name": "deletion_request", "expectations": [{}]})
    )
    with pytest.raises(ValueError, match="expectation 0 needs"):
        load_suite_spec("deletion_request", suites_dir=tmp_path)


def test_suite_files_repeat_the_library_patterns() -> None:
    """The JSON suite and hamu.governance.requests must agree, or GX and the verdicts would disagree."""
    request_spec = load_suite_spec("deletion_request")
    regexes = {
        e["kwargs"]["column"]: e["kwargs"]["regex"]
        for e in request_spec.expectations
        if e["type"] == "expect_column_values_to_match_regex"
    }
    assert regexes["record_id"] == RECORD_ID_PATTERN
    assert request_spec.version == "1"
    assert len(build_suite(request_spec).expectations) == len(request_spec.expectations)
    kwargs = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in request_spec.expectations}
    assert kwargs[("expect_column_values_to_match_regex", "request_id")]["regex"] == REQUEST_ID_PATTERN
    assert kwargs[("expect_column_values_to_be_in_set", "reason")]["value_set"] == [r.value for r in Reason]


def test_queue_to_verdicts_round_trip(tmp_path: Path) -> None:
    """Claim from a real queue, validate, record verdicts, close; the next batch sees the erasure."""
    queue = RequestQueue(default_queue_url(tmp_path))
    src = tmp_path / "in.csv"
    src.write_text(
        "request_id,record_id,reason,received_at\n"
        "q-1,rec-1,privacy,2026-01-01T00:00:00Z\n"
        "q-2,rec-1,privacy,2026-01-02T00:00:00Z\n"
        "q-3,not-in-manifest,bias,2026-01-03T00:00:00Z\n"
        "q-4,rec-2,copyright,2026-01-04T00:00:00Z\n"
    )
    queue.submit_file(src)
    claimed = queue.claim_batch("batch-1")
    df = requests_frame(claimed)
    assert str(df["received_at"].dtype) == "datetime64[us, UTC]"
    outcome = validate_requests(df, MANIFEST, queue.erased_record_ids())
    queue.record_verdicts("batch-1", outcome.verdict_map())
    accepted = outcome.accepted()["request_id"].tolist()
    assert accepted == ["q-1", "q-4"]
    queue.mark_unlearned("batch-1", accepted, "2")
    assert queue.mark_rejected("batch-1") == 2
    assert queue.counts() == {
        "pending": 0,
        "claimed": 0,
        "unlearned": 2,
        "erased": 0,
        "rejected": 2,
        "quarantined": 0,
    }
    assert queue.get("q-3").verdict_reason == "record ID not in the training manifest"

    src2 = tmp_path / "in2.csv"
    src2.write_text("request_id,record_id,reason,received_at\nq-5,rec-1,privacy,2026-02-01T00:00:00Z\n")
    queue.submit_file(src2)
    again = validate_requests(
        requests_frame(queue.claim_batch("batch-2")), MANIFEST, queue.erased_record_ids()
    )
    assert again.verdict_map() == {
        "q-5": ("already-erased", "record ID already erased by an earlier request")
    }
    assert [r.request_id for r in queue.list(Status.CLAIMED)] == ["q-5"]
    queue.close()


def test_requests_frame_keeps_utc() -> None:
    from hamu.governance.requests import Request, Verdict

    when = datetime(2026, 1, 1, 5, tzinfo=UTC)
    r = Request(
        "a",
        "rec-1",
        Reason.BIAS,
        when,
        Status.CLAIMED,
        Verdict.ACCEPTED,
        "ok",
        "b",
        when,
        when,
        when,
        "0" * 64,
        None,
    )
    df = requests_frame([r])
    assert df.loc[0, "received_at"] == pd.Timestamp("2026-01-01T05:00:00Z")
    assert df.loc[0, "reason"] == "bias"
    assert requests_frame([]).columns.tolist() == ["request_id", "record_id", "reason", "received_at"]
