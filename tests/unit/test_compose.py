"""docker-compose.yml cannot run here (no Docker engine), so check it against the real CLI and
settings: every command resolves, every variable is one the settings read, and the values parse."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from worker.cli import main
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def substitute(value: str) -> str:
    """Resolve ${VAR:-default} and ${VAR:?message} as compose would, with sample values."""
    samples = {
        "TENCENTCLOUD_SECRET_ID": "AKIDsample",
        "TENCENTCLOUD_SECRET_KEY": "sample-key",
        "JOBTRACKER_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "JOBTRACKER_CLIENT_SECRET_KEY": "sample-master-key-of-more-than-32-characters",
    }

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if op == ":-":
            return samples.get(name, rest)
        return samples[name]

    return re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", one, str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_services_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "worker", "beat", "api"} <= set(services)
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name]
    for name in ("worker", "beat", "api"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["restart"] == "no"


def _resolve_cli(args: list[str]) -> click.Command:
    command: click.Command = main
    for arg in args:
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(click.Context(command), arg)
        assert sub is not None, f"`jobtracker {' '.join(args)}`: no command {arg!r}"
        command = sub
    return command


def test_commands_match_the_real_cli(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or name in ("postgres", "redis"):
            continue
        program, *args = command
        if program == "jobtracker":
            _resolve_cli(args)
        elif program == "celery":
            assert args[:2] == ["-A", "worker"], f"{name}: the Celery app is `worker`"
            assert args[2] in ("worker", "beat", "flower"), f"{name}: {args[2]}"
            import worker

            assert worker.app.main == "jobtracker"
        else:
            pytest.fail(f"{name}: unexpected program {program}")


def _settings(service: dict[str, Any]) -> Settings:
    return Settings.from_env({k: substitute(v) for k, v in service["environment"].items()})


def test_environment_is_what_the_settings_read(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ("postgres", "redis"):
            continue
        env = {k: substitute(v) for k, v in service["environment"].items()}
        recorder = RecordingEnv(env)
        settings = Settings.from_env(recorder)  # validates every value
        unknown = set(env) - recorder.asked
        assert not unknown, f"{name}: variables no setting reads: {unknown}"
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.database_url.split("@")[1].startswith("postgres:")
        assert settings.broker_url.startswith("redis://redis:")
        if name == "api":
            continue
        assert settings.has_credentials
        assert settings.webhook_secrets
        # The worker signs API clients' callbacks: it derives their secrets from this key.
        assert settings.client_secret_key


def test_api_service_listens_publicly_with_no_secrets_and_a_readiness_check(
    compose: dict[str, Any],
) -> None:
    api = compose["services"]["api"]
    assert api["command"] == ["jobtracker", "api"]
    settings = _settings(api)
    assert settings.api_host == "0.0.0.0"
    assert f"{settings.api_port}:{settings.api_port}" in api["ports"]
    assert f"{settings.metrics_port}:{settings.metrics_port}" in api["ports"]
    # The internet-facing process holds no provider credentials and no signing keys.
    assert not settings.has_credentials
    assert settings.client_secret_key is None and not settings.webhook_secrets
    # The same database and broker (the shared rate limit) as the worker.
    worker = _settings(compose["services"]["worker"])
    assert (settings.database_url, settings.broker_url) == (worker.database_url, worker.broker_url)
    assert settings.metrics_port != worker.metrics_port
    check = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.api_port}/readyz" in check


def test_flower_service_runs_celery_flower_with_the_extra_installed(
    compose: dict[str, Any],
) -> None:
    flower = compose["services"]["flower"]
    assert flower["command"] == ["celery", "-A", "worker", "flower", "--port=5555"]
    assert "5555:5555" in flower["ports"]
    # The image must have Flower: the Dockerfile installs the `flower` extra of pyproject.toml.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install[^\n]*\.\[flower\]", dockerfile), dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^flower = \["flower>=2,<3"\]', pyproject, re.M), "no flower extra"


def test_worker_serves_metrics_on_a_published_port(compose: dict[str, Any]) -> None:
    worker_service = compose["services"]["worker"]
    env = {k: substitute(v) for k, v in worker_service["environment"].items()}
    port = Settings.from_env(env).metrics_port
    assert port > 0
    assert f"{port}:{port}" in worker_service["ports"]
    # The worker keeps the shared settings (the YAML merge did not drop them).
    assert env["JOBTRACKER_DATABASE_URL"].startswith("postgresql+psycopg://")
    # Only the worker (and the API) serve metrics: beat and the one-shot migration do not.
    for name in ("beat", "migrate"):
        assert "JOBTRACKER_METRICS_PORT" not in compose["services"][name]["environment"]


def test_the_image_runs_as_a_user_that_owns_its_working_directory() -> None:
    """The embedded defaults write ./jobtracker.db and ./.jobtracker-broker: the service user
    must be able to write the directory it starts in (no Docker engine here, so read the file).
    """
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    user = next(line.split()[1] for line in reversed(lines) if line.startswith("USER "))
    workdir = next(line.split()[1] for line in reversed(lines) if line.startswith("WORKDIR "))
    assert user != "root"
    created = re.search(
        rf"useradd\b[^\n]*--create-home[^\n]*--home-dir {re.escape(workdir)} {user}\b",
        " ".join(lines),
    )
    assert created, f"the final WORKDIR {workdir} is not the home directory created for {user}"
    # USER comes after the last RUN: nothing later resets ownership.
    last_run = max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    assert lines.index(f"USER {user}") > last_run


def test_the_image_copies_every_folder_the_package_is_built_from() -> None:
    """`pip install .` in the image needs the code, the tables, the revisions and the package
    root whose symlinks point at them (no Docker engine here, so read the file)."""
    copied = {
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    }
    assert {"worker", "models", "migrations", "jobtracker"} <= copied
    assert all((ROOT / "jobtracker" / name).is_symlink() for name in ("models", "migrations"))
