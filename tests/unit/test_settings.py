"""Settings: defaults, YAML file, environment, and the documented defaults file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from config.documented import documented_yaml
from config.settings import CONFIG_ENV, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PEDIFACE_"):
            monkeypatch.delenv(name)
    # load_settings() exports the file it read; an empty value is restored to "unset" after each test.
    monkeypatch.setenv(CONFIG_ENV, "")


def test_defaults_need_no_file_and_no_redis() -> None:
    settings = Settings()
    assert settings.embedded_broker
    assert settings.series.quiet_period_s == 30.0
    assert settings.dicom.ae_title == "PEDIFACE" and settings.dicom.port == 11112
    assert settings.data_dir.is_absolute()
    assert settings.archive_folder == settings.data_dir / "archive"


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("dicom:\n  port: 4242\n  ae_title: SITEGW\nbroker:\n  url: redis://127.0.0.1:6379/3\n")
    monkeypatch.setenv("PEDIFACE_DICOM__PORT", "5151")
    settings = load_settings(config)
    assert settings.dicom.port == 5151  # the environment wins over the file
    assert settings.dicom.ae_title == "SITEGW"
    assert settings.broker.url == "redis://127.0.0.1:6379/3" and not settings.embedded_broker
    assert os.environ[CONFIG_ENV] == str(config.resolve())  # worker children read the same file


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("dicom:\n  ae_title: 'MUCH-TOO-LONG-AE-TITLE'\n", "not a valid AE title"),
        ("dicom:\n  port: 70000\n", "less than or equal to 65535"),
        ("dicom:\n  prot: 104\n", "Extra inputs are not permitted"),
        ("- a\n- list\n", "mapping at the top level"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises((ValidationError, ValueError), match=message):
        load_settings(config)


def test_documented_defaults_file_is_current() -> None:
    assert (REPO / "config" / "pediface.yaml").read_text() == documented_yaml(), (
        "config/pediface.yaml is stale: regenerate it with "
        "`pediface config --defaults > config/pediface.yaml`"
    )


def test_documented_defaults_file_loads_to_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # data_dir is relative: compare in the same directory
    assert load_settings(REPO / "config" / "pediface.yaml") == Settings()


def test_deid_key_file_created_once_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = settings.deid_key()
    path = tmp_path / "secrets" / "deid.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path).deid_key() == key and len(key) >= 32


def test_deid_secret_is_masked_when_shown(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, deid={"secret": "correct horse battery staple"})
    assert settings.deid_key() == b"correct horse battery staple"
    assert "horse" not in repr(settings) and "horse" not in settings.model_dump_json()


def test_readme_documents_every_option() -> None:
    readme = (REPO / "README.md").read_text()
    missing = []
    for name, info in Settings.model_fields.items():
        section = info.get_default(call_default_factory=True)
        names = (
            [f"{name}.{sub}" for sub in type(section).model_fields]
            if isinstance(section, BaseModel)
            else [name]
        )
        missing += [n for n in names if f"`{n}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
