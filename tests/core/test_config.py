"""core/config.py: every documented variable reaches its setting, with the same precedence
(defaults < `.env` < real environment < explicit overrides), the same derived defaults, typed
values and clear errors. Real environment variables and real `.env` files, nothing faked."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import Settings, load_settings, with_overrides
from tests.conftest import ROOT

# The three URLs keep the names every deployment tool uses; every other setting is PARLEY_<NAME>.
URL_VARIABLES = {
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "CELERY_BROKER_URL": "broker_url",
}
# Documented variables that Settings does not hold, and the file that reads each one.
READ_ELSEWHERE = {
    "PORT": "Procfile",
    "HOST": "Procfile",
    "WEB_CONCURRENCY": "Procfile",
    "WEB_CONNECTIONS": "Procfile",
    "WORKER_CONCURRENCY": "Procfile",
    "LOG_LEVEL": "core/logs.py",
    "LOG_FORMAT": "core/logs.py",
    "PROMETHEUS_MULTIPROC_DIR": "core/metrics.py",
}
# Set by code only: no variable may reach them (PARLEY_TESTING would turn rate limits off).
CODE_ONLY = {"testing", "extra", "page_limit_default", "page_limit_max", "db_pre_ping"}
REDIS = "redis://127.0.0.1:6399/5"


def _env_example_variables() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.M))


def _readme_table_variables() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [row.split("|")[1] for row in section.splitlines() if row.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


DOCUMENTED = sorted(_env_example_variables() | _readme_table_variables())


def _field_of(variable: str) -> str:
    return URL_VARIABLES.get(variable) or variable.removeprefix("PARLEY_").lower()


@pytest.fixture(autouse=True)
def environment(tmp_path: Path) -> Iterator[None]:
    """None of our variables set except a Redis URL and a private data dir; os.environ put back
    afterwards (load_settings loads `.env` files into it)."""
    saved = dict(os.environ)
    for name in saved:
        if name.startswith(("PARLEY_", "CELERY_")) or name in URL_VARIABLES:
            del os.environ[name]
    os.environ["REDIS_URL"] = REDIS
    os.environ["PARLEY_DATA_DIR"] = str(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_the_documentation_is_parsed_into_the_variables_it_names() -> None:
    """Guards the parametrized tests below against a parser that finds nothing."""
    assert len(_env_example_variables()) > 60
    assert {"PORT", "PARLEY_DATA_DIR", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"} <= (
        _readme_table_variables()
    )
    assert "PARLEY_LIMIT_FAILED_AUTH_IP" in DOCUMENTED


@pytest.mark.parametrize("variable", [v for v in DOCUMENTED if v not in READ_ELSEWHERE])
def test_every_documented_variable_reaches_its_setting(variable: str, tmp_path: Path) -> None:
    """Each variable of .env.example and README's table, set to a value unlike its default,
    arrives typed in its own field."""
    name = _field_of(variable)
    assert name in Settings.model_fields, f"{variable} is documented but no setting holds it"
    field = Settings.model_fields[name]
    kind, default = field.annotation, field.default
    expected: object
    if kind is bool:
        raw, expected = ("0", False) if default else ("1", True)
    elif kind is int:
        raw, expected = str(default + 7), default + 7
    elif kind is float:
        raw, expected = str(default + 1.5), default + 1.5
    elif kind is Path:
        raw, expected = str(tmp_path / "elsewhere"), tmp_path / "elsewhere"
    else:
        raw = expected = f"set-by-{variable}"
    os.environ[variable] = raw

    settings = load_settings(env_file=None)

    assert getattr(settings, name) == expected
    assert type(getattr(settings, name)) is type(expected)


@pytest.mark.parametrize("variable", sorted(READ_ELSEWHERE))
def test_documented_variables_outside_settings_are_read_where_they_are_used(
    variable: str,
) -> None:
    assert variable in DOCUMENTED
    assert variable in (ROOT / READ_ELSEWHERE[variable]).read_text()
    assert _field_of(variable) not in Settings.model_fields


def test_every_setting_read_from_the_environment_is_documented() -> None:
    """In .env.example, README or the docs/ page of its area (moderation's flood limits)."""
    text = "\n".join(
        p.read_text() for p in [ROOT / ".env.example", ROOT / "README.md", *ROOT.glob("docs/*.md")]
    )
    names = {field: var for var, field in URL_VARIABLES.items()}
    undocumented = [
        names.get(field, f"PARLEY_{field.upper()}")
        for field in Settings.model_fields
        if field not in CODE_ONLY and names.get(field, f"PARLEY_{field.upper()}") not in text
    ]
    assert undocumented == []


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PARLEY_TESTING", "1"),
        ("PARLEY_PAGE_LIMIT_DEFAULT", "5"),
        ("PARLEY_PAGE_LIMIT_MAX", "5"),
        ("PARLEY_EXTRA", '{"a": 1}'),
    ],
)
def test_code_only_settings_are_not_read_from_the_environment(variable: str, raw: str) -> None:
    name = _field_of(variable)
    assert name in CODE_ONLY
    os.environ[variable] = raw
    settings = load_settings(env_file=None)
    assert getattr(settings, name) == (
        Settings.model_fields[name].get_default(call_default_factory=True)
    )


def test_code_only_settings_are_set_by_overrides() -> None:
    settings = load_settings(
        {"testing": True, "page_limit_max": 20, "extra": {"a": 1}}, env_file=None
    )
    assert (settings.testing, settings.page_limit_max, settings.extra) == (True, 20, {"a": 1})


def test_overrides_beat_the_environment_which_beats_dotenv_which_beats_defaults(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PARLEY_EDIT_WINDOW_S=30\nPARLEY_MAX_MEMBERS=40\nPARLEY_JWT_LEEWAY_S=50\n"
        "DATABASE_URL=sqlite:///from-dotenv.db\n"
    )
    os.environ["PARLEY_MAX_MEMBERS"] = "41"
    os.environ["PARLEY_JWT_LEEWAY_S"] = "51"

    settings = load_settings({"jwt_leeway_s": 52}, env_file=env_file)

    assert settings.max_text_length == 4000  # default
    assert settings.edit_window_s == 30  # .env
    assert settings.database_url == "sqlite:///from-dotenv.db"  # .env, a non-prefixed name
    assert settings.max_members == 41  # real environment over .env
    assert settings.jwt_leeway_s == 52  # override over both


def test_overrides_beat_the_environment_for_the_url_variables_too() -> None:
    os.environ["DATABASE_URL"] = "sqlite:///from-env.db"
    os.environ["CELERY_BROKER_URL"] = "amqp://from-env//"
    settings = load_settings(
        {"database_url": "sqlite:///override.db", "redis_url": "redis://override/1"},
        env_file=None,
    )
    assert settings.database_url == "sqlite:///override.db"
    assert settings.redis_url == "redis://override/1"
    assert settings.broker_url == "amqp://from-env//"


def test_a_variable_set_empty_means_its_default_and_hides_the_dotenv_value(tmp_path: Path) -> None:
    """As `make run`'s test does: REDIS_URL="" keeps a developer's .env out of the run."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PARLEY_EDIT_WINDOW_S=30\nCELERY_BROKER_URL=amqp://from-dotenv//\nPARLEY_MAX_MEMBERS=\n"
    )
    os.environ["PARLEY_EDIT_WINDOW_S"] = ""
    os.environ["CELERY_BROKER_URL"] = ""

    settings = load_settings(env_file=env_file)

    assert settings.edit_window_s == 600
    assert settings.broker_url == REDIS
    assert settings.max_members == 1000  # empty in .env: the default too


def test_dotenv_also_reaches_the_variables_read_outside_settings(tmp_path: Path) -> None:
    """LOG_LEVEL and the like are read from os.environ, so load_settings loads .env there."""
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=DEBUG\nLOG_FORMAT=json\n")
    os.environ["LOG_FORMAT"] = "text"
    os.environ.pop("LOG_LEVEL", None)

    load_settings(env_file=env_file)

    assert os.environ["LOG_LEVEL"] == "DEBUG"
    assert os.environ["LOG_FORMAT"] == "text"  # the real environment wins


def test_database_defaults_to_sqlite_in_the_data_dir_resolved_from_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    os.environ["PARLEY_DATA_DIR"] = "relative"
    settings = load_settings(env_file=None)
    assert settings.data_dir == tmp_path.resolve() / "relative"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'relative' / 'parley.db'}"
    assert settings.is_sqlite

    del os.environ["PARLEY_DATA_DIR"]
    assert load_settings(env_file=None).data_dir == tmp_path.resolve() / "var"
    assert load_settings({"data_dir": "given"}, env_file=None).database_url == (
        f"sqlite:///{tmp_path.resolve() / 'given' / 'parley.db'}"
    )


def test_the_broker_defaults_to_redis_unless_set() -> None:
    assert load_settings(env_file=None).broker_url == REDIS
    assert load_settings({"redis_url": "redis://given/2"}, env_file=None).broker_url == (
        "redis://given/2"
    )
    os.environ["CELERY_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:5672//"
    assert load_settings(env_file=None).broker_url == "amqp://guest:guest@127.0.0.1:5672//"


def test_without_redis_url_the_embedded_redis_announced_in_the_data_dir_is_used(
    tmp_path: Path,
) -> None:
    del os.environ["REDIS_URL"]
    (tmp_path / "redis.url").write_text("redis://127.0.0.1:7001/0\n")
    settings = load_settings(env_file=None)
    assert settings.redis_url == "redis://127.0.0.1:7001/0"
    assert settings.broker_url == "redis://127.0.0.1:7001/0"


def test_without_redis_url_or_an_embedded_redis_start_up_stops_with_a_clear_message() -> None:
    del os.environ["REDIS_URL"]
    with pytest.raises(RuntimeError, match=r"REDIS_URL is not set.*make run"):
        load_settings(env_file=None)


@pytest.mark.parametrize("raw", ["1", "true", "True", "yes", "on", "ON"])
def test_flags_read_as_true(raw: str) -> None:
    os.environ["PARLEY_PUSH_ALLOW_PRIVATE_TARGETS"] = raw
    assert load_settings(env_file=None).push_allow_private_targets is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off"])
def test_flags_read_as_false(raw: str) -> None:
    os.environ["PARLEY_ACCESS_LOG"] = raw
    assert load_settings(env_file=None).access_log is False


def test_numbers_are_typed_as_their_setting() -> None:
    os.environ.update(
        PARLEY_STREAM_MAXLEN="25", PARLEY_OUTBOX_SWEEP_S="2", PARLEY_RETENTION_DAYS="0.5"
    )
    settings = load_settings(env_file=None)
    assert settings.stream_maxlen == 25 and type(settings.stream_maxlen) is int
    assert settings.outbox_sweep_s == 2.0 and type(settings.outbox_sweep_s) is float
    assert settings.retention_days == 0.5


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PARLEY_EDIT_WINDOW_S", "ten minutes"),
        ("PARLEY_OUTBOX_STALE_S", "soon"),
        ("PARLEY_ACCESS_LOG", "maybe"),
    ],
)
def test_a_value_that_does_not_parse_is_an_error_naming_the_variable(
    variable: str, raw: str
) -> None:
    os.environ[variable] = raw
    with pytest.raises(ValueError, match=re.escape(variable)) as caught:
        load_settings(env_file=None)
    assert repr(raw) in str(caught.value)


def test_an_unknown_override_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="unknown setting 'edit_window'"):
        load_settings({"edit_window": 5}, env_file=None)


def test_settings_are_immutable() -> None:
    settings = load_settings(env_file=None)
    with pytest.raises(ValidationError, match="frozen"):
        settings.edit_window_s = 5  # type: ignore[misc]
    assert settings.edit_window_s == 600


def test_with_overrides_changes_only_what_it_names_and_reads_no_environment() -> None:
    os.environ["PARLEY_EDIT_WINDOW_S"] = "30"
    settings = load_settings(env_file=None)
    os.environ["PARLEY_EDIT_WINDOW_S"] = "45"
    os.environ["PARLEY_MAX_MEMBERS"] = "7"

    changed = with_overrides(
        settings, retention_days=10 / 86400, push_allow_private_targets=True, redis_url="redis://x"
    )

    assert changed.retention_days == 10 / 86400 and changed.push_allow_private_targets
    assert (changed.edit_window_s, changed.max_members) == (30, 1000)
    assert changed.broker_url == settings.broker_url == REDIS  # not derived again
    assert changed.data_dir == settings.data_dir
    assert settings.retention_days == 0.0 and settings.redis_url == REDIS
    assert with_overrides(settings) == settings
    with pytest.raises(ValueError, match="unknown setting 'retention'"):
        with_overrides(settings, retention=1)


def test_moderation_policies_from_the_environment_are_parsed_by_the_property() -> None:
    os.environ["PARLEY_MODERATION_POLICIES"] = '{"support": {"email": "hold"}}'
    assert load_settings(env_file=None).moderation_overrides == {"support": {"email": "hold"}}
    del os.environ["PARLEY_MODERATION_POLICIES"]
    assert load_settings(env_file=None).moderation_overrides is None
