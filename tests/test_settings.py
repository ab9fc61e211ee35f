"""Configuration: environment, .env file, CLI overrides, validation messages, hidden secrets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from callagent.__main__ import main
from callagent.settings import ConfigError, Settings
from callagent.stages import StageTable


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures logging for the process; give the next tests their defaults back."""
    yield
    structlog.reset_defaults()


def test_defaults_are_the_embedded_ones() -> None:
    s = Settings.from_env({}, env_file=None)
    assert (s.host, s.port, s.upstream, s.store) == ("127.0.0.1", 8000, "local", "sqlite:///var/callagent.db")


def test_environment_then_overrides(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport CALLAGENT_PORT=9001\nCALLAGENT_FALLBACK_TEXT='请稍候'\n")
    s = Settings.from_env({"CALLAGENT_IDLE_TIMEOUT": "2.5"}, env_file=env_file, port=9100)
    assert s.port == 9100 and s.idle_timeout == 2.5 and s.fallback_text == "请稍候"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALLAGENT_PORT": "eighty"}, "CALLAGENT_PORT='eighty' is not a valid int"),
        ({"CALLAGENT_UPSTREAM": "openai"}, "CALLAGENT_UPSTREAM"),
        ({"CALLAGENT_UPSTREAM": "fastgpt"}, "FASTGPT_BASE_URL, FASTGPT_API_KEY, FASTGPT_APP_ID: required"),
        ({"CALLAGENT_STORE": "postgres://x"}, "CALLAGENT_STORE"),
        ({"CALLAGENT_IDLE_TIMEOUT": "0"}, "CALLAGENT_IDLE_TIMEOUT: must be a positive"),
        ({"CALLAGENT_FALLBACK_ENABLED": "maybe"}, "not a valid bool"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env, env_file=None)


def test_secrets_never_show_in_reprs() -> None:
    s = Settings.from_env(
        {
            "CALLAGENT_UPSTREAM": "fastgpt",
            "FASTGPT_BASE_URL": "http://127.0.0.1:3000",
            "FASTGPT_API_KEY": "fastgpt-very-secret",
            "FASTGPT_APP_ID": "app1",
            "CALLAGENT_API_KEYS": "k-one, k-two",
        },
        env_file=None,
    )
    assert "very-secret" not in repr(s) and "k-one" not in repr(s) and "very-secret" not in str(s)
    assert s.fastgpt_api_key.value == "fastgpt-very-secret"
    assert [k.value for k in s.api_keys] == ["k-one", "k-two"]


def test_cli_reports_a_bad_setting_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLAGENT_UPSTREAM", "fastgpt")
    monkeypatch.delenv("FASTGPT_BASE_URL", raising=False)
    assert main(["serve", "--env-file", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("callagent: configuration error: FASTGPT_BASE_URL")
    assert "\n" not in err and "Traceback" not in err


def test_stage_table_aliases_and_passthrough(tmp_path: Path) -> None:
    table = StageTable.load()
    assert table.resolve("3001").code == "1002" and table.resolve("3001").name == "通话中"
    assert table.resolve("2006").code == "2004"
    assert table.resolve("2020").name == "语义无法识别转接人工"
    unknown = table.resolve("9999")
    assert (unknown.code, unknown.name) == ("9999", "")
    custom = tmp_path / "stages.toml"
    custom.write_text('[stages]\n"5000" = { name = "自定义", terminal = true }\n[aliases]\n"5001" = "5000"\n')
    table = StageTable.load(custom)
    assert table.resolve("5001").name == "自定义" and table.resolve("1002").name == ""


def test_stage_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "stages.toml"
    bad.write_text("[stages\n")
    with pytest.raises(ConfigError, match=r"stages\.toml"):
        StageTable.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        StageTable.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("variable", "content", "message"),
    [
        ("CALLAGENT_STAGES_FILE", "[stages\n", "stages.toml"),
        ("CALLAGENT_LOCAL_SCRIPT", "[script]\nstart = 'nowhere'\n", "CALLAGENT_LOCAL_SCRIPT"),
    ],
)
def test_cli_reports_a_bad_data_file_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    content: str,
    message: str,
) -> None:
    bad = tmp_path / "stages.toml"
    bad.write_text(content)
    monkeypatch.setenv(variable, str(bad))
    assert main(["serve", "--env-file", "/nonexistent", "--store", "memory://"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("callagent: configuration error:") and message in err
    assert "\n" not in err and "Traceback" not in err
