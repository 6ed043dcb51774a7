"""How long does validating a deletion batch take? (target: 100k requests vs a 1M-row manifest ≤ 5 s)

Builds a synthetic manifest and batch (2 % unknown, 1 % already erased, 1 % duplicate records), then
times :func:`hamu_pipeline.tasks.validation.validate_requests` end to end: pandas membership and verdicts
plus the GX
suite. The GX import is timed separately because a long-running worker pays it once.
Run: ``.venv/bin/python bench/validation_speed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_S = 5.0


def make_manifest(n: int) -> pd.DataFrame:
    """``n`` records with IDs ``rec-0000000…``, a label and a fake 64-hex digest."""
    ids = [f"rec-{i:07d}" for i in range(n)]
    return pd.DataFrame({"record_id": ids, "label": np.arange(n) % 10, "digest": ["ab" * 32] * n})


def make_batch(n: int, manifest_rows: int, rng: np.random.Generator) -> tuple[pd.DataFrame, set[str]]:
    """``n`` requests: mostly known records, some unknown, some erased, some repeated records."""
    picks = rng.choice(manifest_rows, size=n, replace=False)
    records = [f"rec-{i:07d}" for i in picks]
    unknown = rng.choice(n, size=n // 50, replace=False)
    for i in unknown:
        records[i] = f"missing-{i}"
    duplicates = rng.choice(n, size=n // 100, replace=False)
    for i in duplicates:
        records[i] = records[(i + 1) % n]
    erased = {records[i] for i in rng.choice(n, size=n // 100, replace=False)}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "request_id": [f"req-{i:07d}" for i in range(n)],
            "record_id": records,
            "reason": rng.choice(["privacy", "copyright", "bias", "other"], size=n),
            "received_at": pd.to_datetime([start + timedelta(seconds=int(s)) for s in range(n)], utc=True),
        }
    )
    return frame, erased


def main() -> int:
    """Print a table of (rows, manifest rows, seconds) and fail if the 100k × 1M case misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 10k × 100k case")
    args = parser.parse_args()

    t0 = time.perf_counter()
    from hamu_pipeline.tasks.validation import validate_requests

    import_s = time.perf_counter() - t0
    print(f"import hamu_pipeline.tasks.validation (great_expectations): {import_s:.2f} s")
    cases = [(10_000, 100_000)] if args.quick else [(10_000, 100_000), (100_000, 1_000_000)]
    rng = np.random.default_rng(0)
    print(f"{'requests':>10} {'manifest':>10} {'ids as':>7} {'validate_requests s':>20} {'verdicts':<60}")
    worst = 0.0
    for n_requests, n_manifest in cases:
        manifest = make_manifest(n_manifest)
        batch, erased = make_batch(n_requests, n_manifest, rng)
        for label, ids in (("Series", manifest["record_id"]), ("set", set(manifest["record_id"]))):
            start = time.perf_counter()
            outcome = validate_requests(batch, ids, erased)
            took = time.perf_counter() - start
            if (n_requests, n_manifest) == (100_000, 1_000_000):
                worst = max(worst, took)
            counts = ", ".join(f"{k}={v}" for k, v in outcome.counts().items() if v)
            print(f"{n_requests:>10} {n_manifest:>10} {label:>7} {took:>20.2f} {counts:<60}")
    if not args.quick:
        verdict = "OK" if worst <= TARGET_S else "TOO SLOW"
        print(f"100k requests vs 1M manifest: worst {worst:.2f} s (target ≤ {TARGET_S:.0f} s): {verdict}")
        return 0 if worst <= TARGET_S else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
