"""The web console without a socket: password hashes, exposure rules, pages, retry, and `pediface status`."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from config.sections import ConsoleSettings
from config.settings import Settings, load_settings
from gateway.console import SECURITY_HEADERS, Console, main
from gateway.console_auth import (
    ConsoleConfigError,
    check_exposure,
    hash_password,
    is_loopback,
    verify_password,
)
from spool.manifest import JobState
from spool.report import redact_uids, status_table
from spool.store import Spool

ORIGINAL_UID = "1.2.156.112605.14038010222575.2012.0.0.1"


def settings_for(tmp_path: Path, **console: object) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", metrics={"port": 9999}, console=console)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def scrypt_hash() -> str:
    return hash_password("correct horse")


# -- passwords and exposure ---------------------------------------------------------------------


def test_scrypt_hash_verifies_only_the_right_password(scrypt_hash: str) -> None:
    assert scrypt_hash.startswith("scrypt$16384$8$1$")
    assert "correct horse" not in scrypt_hash
    assert verify_password("correct horse", scrypt_hash)
    assert not verify_password("correct horse ", scrypt_hash)
    assert not verify_password("", scrypt_hash)
    assert hash_password("correct horse") != scrypt_hash  # salted


def test_pbkdf2_hash_verifies() -> None:
    encoded = hash_password("s3cret", "pbkdf2_sha256")
    assert encoded.startswith("pbkdf2_sha256$600000$")
    assert verify_password("s3cret", encoded) and not verify_password("s3cret!", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-text-password",
        "scrypt$16384$8$1$!!$!!",
        "scrypt$3$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",
        "md5$abc$def",
        "pbkdf2_sha256$10$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",
    ],
)
def test_malformed_hashes_never_verify(encoded: str) -> None:
    assert not verify_password("anything", encoded)


def test_loopback_detection() -> None:
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.5")
    assert not is_loopback("gateway.example.org")


def test_non_loopback_without_credentials_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConsoleConfigError, match="without a login"):
        check_exposure("0.0.0.0", ConsoleSettings())
    settings = load_settings(None, data_dir=tmp_path / "data", metrics={"host": "0.0.0.0", "port": 9999})
    with pytest.raises(ConsoleConfigError):
        Console(settings, Spool(settings.data_dir), dispatch=lambda job: None)
    # The gateway refuses at construction, before it listens on anything.
    from gateway.server import Gateway

    with pytest.raises(ConsoleConfigError):
        Gateway(settings)


def test_non_loopback_with_credentials_or_console_off_is_accepted(tmp_path: Path, scrypt_hash: str) -> None:
    check_exposure("0.0.0.0", ConsoleSettings(username="reviewer", password_hash=scrypt_hash))
    check_exposure("127.0.0.1", ConsoleSettings())
    check_exposure("::1", ConsoleSettings())
    from gateway.server import Gateway

    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        metrics={"host": "0.0.0.0", "port": 9999},
        console={"enabled": False},
    )
    assert Gateway(settings).console is None


def test_a_plain_text_password_in_the_hash_field_is_refused() -> None:
    with pytest.raises(ConsoleConfigError, match="not a password hash"):
        check_exposure("127.0.0.1", ConsoleSettings(username="reviewer", password_hash="hunter2hunter2"))


def test_username_and_hash_go_together() -> None:
    with pytest.raises(ValueError, match="set together"):
        ConsoleSettings(username="reviewer")


def test_hash_password_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("pw from stdin\n"))
    assert main(["hash-password", "--stdin", "--pbkdf2"]) == 0
    assert verify_password("pw from stdin", capsys.readouterr().out.strip())


# -- pages ----------------------------------------------------------------------------------------


def quarantined_job(spool: Spool) -> str:
    manifest = spool.quarantine_rejected(
        b"not dicom", "SECRETPACS", f"truncated pixel data in instance {ORIGINAL_UID}", "pixels.truncated"
    )
    return manifest.job_id


def test_login_required_when_configured(tmp_path: Path, scrypt_hash: str) -> None:
    settings = settings_for(tmp_path, username="reviewer", password_hash=scrypt_hash)
    console = Console(settings, Spool(settings.data_dir), dispatch=lambda job: None)
    for path in ("/", "/console/", "/console/console.css", "/console/jobs/x/qc.png"):
        response = console.handle("GET", path, {})
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert console.handle("GET", "/", basic("reviewer", "wrong")).status == 401
    assert console.handle("GET", "/", basic("someone", "correct horse")).status == 401
    assert console.handle("GET", "/", {"Authorization": "Basic !!!"}).status == 401
    ok = console.handle("GET", "/", basic("reviewer", "correct horse"))
    assert ok.status == 200 and b"signed in as reviewer" in ok.body
    assert console.handle("GET", "/", basic("reviewer", "correct horse")).status == 200  # cached path


def test_pages_carry_security_headers_and_no_identifiers(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    spool = Spool(settings.data_dir)
    job_id = quarantined_job(spool)
    console = Console(settings, spool, dispatch=lambda job: None)
    for path in ("/", f"/console/jobs/{job_id}"):
        response = console.handle("GET", path, {})
        assert response.status == 200
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
        page = response.body.decode()
        assert ORIGINAL_UID not in page and "SECRETPACS" not in page  # UID redacted, AE hidden
        assert job_id in page
    job_page = console.handle("GET", f"/console/jobs/{job_id}", {}).body.decode()
    assert "truncated pixel data in instance [UID]" in job_page
    assert 'id="retry"' not in job_page and "retry-disabled" in job_page


def test_honest_broker_shows_the_calling_ae_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, honest_broker=True)
    spool = Spool(settings.data_dir)
    job_id = quarantined_job(spool)
    console = Console(settings, spool, dispatch=lambda job: None)
    page = console.handle("GET", f"/console/jobs/{job_id}", {}).body.decode()
    assert "SECRETPACS" in page and ORIGINAL_UID not in page


def test_state_filter_and_bad_requests(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    spool = Spool(settings.data_dir)
    job_id = quarantined_job(spool)
    console = Console(settings, spool, dispatch=lambda job: None)
    assert job_id in console.handle("GET", "/?state=quarantined", {}).body.decode()
    assert job_id not in console.handle("GET", "/console/?state=sent", {}).body.decode()
    assert console.handle("GET", "/?state=<script>", {}).status == 400
    assert b"<script>" not in console.handle("GET", "/?state=<script>", {}).body
    assert console.handle("GET", "/console/jobs/../../etc/passwd", {}).status == 404
    assert console.handle("GET", "/console/jobs/not-a-job", {}).status == 404
    assert console.handle("GET", f"/console/jobs/{job_id}/qc.png", {}).status == 404  # no picture yet
    assert console.handle("GET", "/console", {}).status == 308
    assert console.handle("DELETE", "/", {}).status == 405


def retry(console: Console, job_id: str, token: str | None = None, **headers: str) -> int:
    token = console._csrf_token(job_id) if token is None else token
    return console.handle("POST", f"/console/jobs/{job_id}/retry", headers, f"token={token}".encode()).status


def test_retry_refused_without_the_permission(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    spool = Spool(settings.data_dir)
    job_id = quarantined_job(spool)
    sent: list[str] = []
    console = Console(settings, spool, dispatch=sent.append)
    assert retry(console, job_id) == 403
    assert not sent and spool.load(job_id).state == JobState.quarantined


def test_retry_moves_the_job_back_and_dispatches(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, allow_retry=True)
    spool = Spool(settings.data_dir)
    job_id = quarantined_job(spool)
    sent: list[str] = []
    console = Console(settings, spool, dispatch=sent.append)
    assert retry(console, job_id, token="forged") == 403
    assert retry(console, job_id, Origin="http://evil.example", Host="127.0.0.1:9999") == 403
    assert retry(console, job_id, **{"Sec-Fetch-Site": "cross-site"}) == 403
    assert not sent
    assert retry(console, job_id, Origin="http://127.0.0.1:9999", Host="127.0.0.1:9999") == 303
    assert sent == [job_id]
    manifest = spool.load(job_id)
    assert manifest.state == JobState.dispatched and spool.job_dir(job_id).parent == spool.jobs
    assert retry(console, job_id) == 409  # not in quarantine any more


def test_retry_with_the_broker_down_leaves_the_job_sealed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, allow_retry=True)
    spool = Spool(settings.data_dir)
    job_id = quarantined_job(spool)

    def down(job: str) -> None:
        raise ConnectionError("broker down")

    console = Console(settings, spool, dispatch=down)
    response = console.handle(
        "POST", f"/console/jobs/{job_id}/retry", {}, f"token={console._csrf_token(job_id)}".encode()
    )
    assert response.status == 303 and response.headers["Location"].endswith("retried=queued")
    assert spool.load(job_id).state == JobState.sealed


# -- pediface status ------------------------------------------------------------------------------


def test_status_table(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    spool = Spool(settings.data_dir)
    job_id = quarantined_job(spool)
    spool.store_instance("a" * 24, "PACS", "1.2.3.4.5", b"x")
    (settings.data_dir / "broker" / "queue").mkdir(parents=True)  # the embedded broker's folder
    text = status_table(settings)
    assert "queue depth  0" in text
    assert "Open series (1)" in text and "a" * 24 in text
    assert job_id in text and "pixels.truncated" in text
    assert ORIGINAL_UID not in text and "SECRETPACS" not in text
    assert "quarantined  1" in text


def test_redact_uids_keeps_addresses() -> None:
    assert redact_uids(f"uid {ORIGINAL_UID} at 127.0.0.1:104") == "uid [UID] at 127.0.0.1:104"
