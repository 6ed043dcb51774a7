"""The package outside the checkout: a wheel built from the source tree, installed into a clean virtual
environment, runs `hamu` from another directory and completes a deletion batch there.

The clean environment gets the already-installed dependencies through a ``.pth`` line (the machine has no
index to install them from), but none of the checkout: ``hamu`` and ``hamu_pipeline`` must come from the
wheel, the GX suite from its package data, the command from its entry point.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: Import names whose distribution is named differently.
DISTRIBUTION_OF = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "markdown_it": "markdown-it-py",
    "great_expectations": "great-expectations",
    "prefect_dask": "prefect-dask",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the source tree (what a clean clone holds), without build isolation."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".hamu", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench"
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root, source],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = root.glob("*.whl")
    return path


def _requirements(metadata: str) -> dict[str, set[str]]:
    """Distribution names required by the wheel, by extra ("" for the base requirements)."""
    found: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        spec = line.removeprefix("Requires-Dist: ")
        name = re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower()
        extra = re.search(r'extra == "([^"]+)"', spec)
        found.setdefault(extra.group(1) if extra else "", set()).add(name)
    return found


def _imported(package: str) -> set[str]:
    """Top-level third-party modules the package's source imports (stdlib and first-party excluded)."""
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("hamu", "hamu_pipeline")}


def test_the_wheel_holds_the_packages_their_data_and_declares_what_they_import(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "hamu_pipeline/expectations/deletion_request.json" in names  # the GX suite is package data
    assert {"hamu/py.typed", "hamu_pipeline/py.typed"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"hamu", "hamu_pipeline"}, tops  # no top-level `tasks` or `flows` any more
    assert "hamu = hamu_pipeline.flows.cli:app" in entry_points
    required = _requirements(metadata)
    declared = required[""] | required["pipeline"]
    for package in ("hamu", "hamu_pipeline"):
        for module in _imported(package):
            dist = DISTRIBUTION_OF.get(module, module).lower()
            assert dist in declared, f"{package} imports {module} but the wheel does not require {dist}"


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed and the test environment's dependencies."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return root


def _clean_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "HAMU_", "MLFLOW_", "PYTHON")) and k != "VIRTUAL_ENV"
    }
    return env | {"HAMU_HOME": str(home), "OMP_NUM_THREADS": "1"}


def test_the_example_workload_runs_end_to_end_from_the_installed_package(venv: Path, tmp_path: Path) -> None:
    """examples/tabular_csv (a workload written outside hamu: a CSV with its own record IDs), run from a copy
    outside the checkout with the installed `hamu`: init, submit, batch, promote, verify."""
    env = _clean_env(tmp_path / "home")
    project = tmp_path / "project"
    shutil.copytree(REPO / "examples" / "tabular_csv", project)

    def run(*args: str | Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(a) for a in args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, (" ".join(map(str, args)), (done.stdout + done.stderr)[-3000:])
        return done

    hamu = venv / "bin" / "hamu"
    shown = run(hamu, "--help", timeout=120)
    assert "init" in shown.stdout and "batch" in shown.stdout
    where = run(
        venv / "bin" / "python",
        "-c",
        "import hamu, hamu_pipeline.tasks.validation as v; print(hamu.__file__); print(v.EXPECTATIONS_DIR)",
        timeout=120,
    )
    module, suites = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(suites).is_relative_to(venv), where.stdout
    assert (Path(suites) / "deletion_request.json").is_file()

    run(hamu, "init", "--preset", "patients")
    with open(project / "patients.csv", encoding="utf-8") as fh:
        ids = [line.split(",", 1)[0] for line in fh.read().splitlines()[1:]]
    training = [record for i, record in enumerate(ids) if i % 4 != 0]  # the workload's own split
    received = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    rows = [f"erase-{i:03d},{record},privacy,{received}" for i, record in enumerate(training[:120])]
    (project / "requests.csv").write_text(
        "request_id,record_id,reason,received_at\n" + "\n".join(rows) + "\n"
    )
    run(hamu, "requests", "submit", "requests.csv")
    batch = run(hamu, "batch", "run", "--preset", "patients", "--shadow-models", "0", "--exact")
    found = re.search(r"batch (b\d{8}T\d{6}-[0-9a-f]{6})", batch.stdout)
    assert found and "completed" in batch.stdout, batch.stdout[-3000:]
    promoted = run(hamu, "promote", "--batch", found.group(1))
    assert "champion" in promoted.stdout, promoted.stdout[-2000:]
    listed = run(hamu, "requests", "list", "--json")
    assert listed.stdout.count('"erased"') >= 40, listed.stdout[-2000:]
    run(hamu, "audit", "verify")
