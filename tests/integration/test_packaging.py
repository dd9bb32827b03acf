"""The installed distribution claims no generic import name: a service with its own ``models``
and ``migrations`` keeps them, and still enqueues with ``from jobtracker import track`` or the
published ``from worker import track`` (and Celery finds ``-A worker``).

The wheel is built from this checkout and unpacked into a fresh virtual environment whose only
other packages are this project's dependencies, so nothing of the checkout (not its editable
install) can answer an import.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(ROOT), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("jobtracker-*.whl")
    yield built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the wheel, and this project's dependencies by reference."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # The dependencies, as a plain path: a path line of a .pth file adds the folder but runs none
    # of the .pth files inside it, so the checkout's editable install stays out of this venv.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_installs_only_jobtracker_and_worker(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        names = archive.namelist()
    assert {top for top in tops if not top.endswith(".dist-info")} == {"jobtracker", "worker"}
    assert "jobtracker/models/jobs.py" in names
    assert "jobtracker/migrations/versions/0001_initial_schema.py" in names
    assert "jobtracker/migrations/alembic.ini" in names


def test_a_service_with_its_own_models_and_migrations_keeps_them(
    installed: Path, tmp_path: Path
) -> None:
    service = tmp_path / "service"
    (service / "migrations").mkdir(parents=True)
    (service / "models.py").write_text("SERVICE_MODELS = True\n")
    (service / "migrations" / "__init__.py").write_text("SERVICE_MIGRATIONS = True\n")
    script = textwrap.dedent(
        """
        import models, migrations
        assert models.SERVICE_MODELS and migrations.SERVICE_MIGRATIONS

        from jobtracker import track as one
        from worker import track as two
        assert one is two and callable(one)

        import jobtracker.models
        assert jobtracker.models.TrackedJob.__tablename__ == "tracked_jobs"

        from celery.app.utils import find_app
        assert find_app("worker").main == "jobtracker"

        from worker.runtime.migrate import head_revision
        assert head_revision()
        print("OK", models.__file__)
        """
    )
    done = subprocess.run(
        [str(installed), "-c", script],
        cwd=service,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("OK ") and str(service) in done.stdout


def test_the_installed_command_line_runs(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(installed), "-m", "worker", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "enqueue" in done.stdout
