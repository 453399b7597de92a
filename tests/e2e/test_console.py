"""The web console in a real browser: headless Chromium (Debian's package) driven by Playwright.

A gateway runs in this process on free loopback ports, dispatching to the embedded folder
broker (no worker takes the tasks; the tests read them back); dcmtk's storescu sends real DICOM
to it. Screenshots are kept under the test's tmp dir; two are also copied to docs/
(console-series.png, console-job.png).

Needs: ``apt-get install chromium`` and ``pip install playwright`` (no browser
download: Playwright drives /usr/bin/chromium), dcmtk, and ../shared for the
storescu test. Skipped with the reason when one is missing.
"""

from __future__ import annotations

import base64
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from common.files import utcnow
from config.settings import load_settings
from gateway.console_auth import hash_password
from gateway.server import Gateway
from spool.manifest import JobManifest, JobState, StateChange, new_job_id
from spool.store import Spool
from tests.conftest import REPO, UIH, free_port, need_shared, need_tool, wait_until
from tests.taskmessages import folder_messages
from worker.qc import QC_SIZE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = REPO / "docs"
#: PEDIFACE_UPDATE_DOCS=1 refreshes docs/console-*.png; otherwise screenshots stay in the test's tmp dir.
UPDATE_DOCS = os.environ.get("PEDIFACE_UPDATE_DOCS") == "1"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium): no browser to drive")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install -c constraints.txt playwright)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., tuple[Gateway, Callable[[], list[str]]]]]:
    """Start a gateway with the given console settings on the embedded folder broker; with it, a
    function that reads the job ids of the tasks waiting on that broker (no worker runs)."""
    running: list[Gateway] = []

    def start(quiet_period_s: float = 1.0, **console: object) -> tuple[Gateway, Callable[[], list[str]]]:
        settings = load_settings(
            None,
            data_dir=tmp_path / "data",
            dicom={"port": free_port()},
            series={"quiet_period_s": quiet_period_s, "poll_interval_s": 0.2},
            metrics={"port": free_port()},
            console=console,
        )
        gw = Gateway(settings)

        def dispatched() -> list[str]:
            tasks = folder_messages(settings)
            assert all(name == "pediface.process_series" and len(args) == 1 for name, args in tasks), tasks
            return [args[0] for _, args in tasks]

        gw.start()
        running.append(gw)
        return gw, dispatched

    yield start
    for gw in running:
        gw.stop()


def url(gw: Gateway, path: str = "/") -> str:
    assert gw.status is not None
    return f"http://127.0.0.1:{gw.status.port}{path}"


def fetch(
    target: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(target, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback test server
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def shot(page: object, tmp_path: Path, name: str, docs: bool = False) -> Path:
    out = tmp_path / "screenshots" / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(out), full_page=True)  # type: ignore[attr-defined]
    if docs:
        shutil.copyfile(out, DOCS / f"console-{name}.png")
    return out


# -- spool fixtures: jobs as the workers leave them --------------------------------------------


def qc_png(out: Path) -> Path:
    """A real QC picture: the shipped template head at 2 mm, face blanked, rendered by the worker's code."""
    import SimpleITK as sitk

    from worker.qc import render_before_after
    from worker.types import FaceLabel, FaceMask, Volume

    model = REPO / "models" / "template-pydeface"
    head = sitk.ReadImage(str(model / "pydeface_mean_reg2mean.nii.gz"))
    keep = sitk.ReadImage(str(model / "pydeface_facemask.nii.gz"))  # 1 = keep, 0 = face and outside
    keep = sitk.Resample(keep, head, sitk.Transform(), sitk.sitkNearestNeighbor)

    def half(image: sitk.Image, interpolator: int) -> sitk.Image:
        return sitk.Resample(
            image,
            [s // 2 for s in image.GetSize()],
            sitk.Transform(),
            interpolator,
            image.GetOrigin(),
            [s * 2 for s in image.GetSpacing()],
            image.GetDirection(),
        )

    before = Volume.from_sitk(half(head, sitk.sitkLinear))
    face = sitk.GetArrayFromImage(half(keep, sitk.sitkNearestNeighbor)) == 0
    labels = face.astype(np.uint8) * FaceLabel.FACE
    mask = FaceMask(labels=labels, masker="template")
    after = Volume(
        np.where(mask.blank(), 0, before.array).astype(before.array.dtype),
        before.spacing,
        before.origin,
        before.direction,
    )
    return render_before_after(before, after, mask, out, title="template head, 2 mm")


def job_manifest(spool: Spool, n: int = 176) -> JobManifest:
    key = "5d1c0f9a2b7e4c3a9f0e1d2c"
    manifest = JobManifest(job_id=new_job_id(key), series_key=key, calling_ae="SCANNER1", n_instances=n)
    manifest.created_at = utcnow() - timedelta(minutes=3)
    manifest.history.append(_change(JobState.sealed, manifest.created_at, f"{n} instances, quiet for 30 s"))
    return manifest


def _change(state: JobState, at: datetime, note: str) -> StateChange:
    return StateChange(state=state, at=at, note=note)


def done_job(spool: Spool, with_qc: bool = True) -> str:
    manifest = job_manifest(spool)
    start = manifest.created_at
    manifest.history += [
        _change(JobState.dispatched, start + timedelta(seconds=1), ""),
        _change(JobState.processing, start + timedelta(seconds=2), "worker w1"),
        _change(JobState.sent, start + timedelta(seconds=94), "176 instances delivered"),
    ]
    manifest.state, manifest.n_sent = JobState.sent, 176
    manifest.output_series_uid = "2.25.208123456789012345678901234567890123"
    job_dir = spool.done / manifest.job_id
    job_dir.mkdir()
    (job_dir / "job.json").write_text(manifest.model_dump_json(indent=2))
    if with_qc:
        qc_png(job_dir / "qc.png")
    return manifest.job_id


def quarantined_job(spool: Spool) -> str:
    manifest = job_manifest(spool, n=40)
    manifest.history.append(_change(JobState.dispatched, manifest.created_at + timedelta(seconds=1), ""))
    job_dir = spool.jobs / manifest.job_id
    (job_dir / "instances").mkdir(parents=True)
    (job_dir / "job.json").write_text(manifest.model_dump_json(indent=2))
    spool.quarantine(
        spool.load(manifest.job_id),
        "several stacks in one series (2 orientations); instance 1.2.156.112605.1.2.3.4.5 is one of them",
        "volume.several_stacks",
    )
    return manifest.job_id


# -- the tests -----------------------------------------------------------------------------------


def test_series_list_shows_a_sent_series_receiving_then_queued(
    browser: object, start_gateway: Callable[..., tuple[Gateway, Callable[[], list[str]]]], tmp_path: Path
) -> None:
    need_shared(UIH)
    need_tool("storescu")
    gw, dispatched = start_gateway(quiet_period_s=6.0, allow_retry=True)
    done_id = done_job(gw.spool)
    quarantined_id = quarantined_job(gw.spool)
    page = browser.new_page(viewport={"width": 1360, "height": 760})  # type: ignore[attr-defined]
    response = page.goto(url(gw, "/"))
    assert response.status == 200
    assert page.title() == "Series · pediface"
    assert page.locator(f'tr[data-job="{done_id}"] .state').inner_text() == "sent"
    assert page.locator(f'tr[data-job="{quarantined_id}"] .state').inner_text() == "quarantined"
    headers = response.all_headers()
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"

    from tests.edge.test_scp import storescu

    files = sorted(UIH.glob("*.dcm"))[:3]
    sent = storescu(gw, *files)
    assert sent.returncode == 0, sent.stderr

    def row_state() -> str | None:
        page.reload()
        rows = page.locator('tr[data-series]:not([data-job=""]), tr[data-phase="receiving"]')
        for i in range(rows.count()):
            row = rows.nth(i)
            if row.get_attribute("data-series") not in ("", "5d1c0f9a2b7e4c3a9f0e1d2c"):
                return row.get_attribute("data-phase")
        return None

    assert wait_until(lambda: row_state() == "receiving", 5, "the series to show as receiving")
    receiving = page.locator('tr[data-phase="receiving"]')
    assert receiving.locator("td.num").first.inner_text() == "3"
    assert page.locator('a.card[data-state="receiving"] .n').inner_text() == "1"
    shot(page, tmp_path, "receiving")
    assert wait_until(lambda: row_state() == "queued", 30, "the series to show as queued")
    assert len(dispatched()) == 1
    queued = page.locator('tr[data-phase="queued"]')
    assert queued.get_attribute("data-job") == dispatched()[0]

    # Filter by state (the cards are links with ?state=).
    # page.url changes when the navigation commits, before the new page is parsed: wait for "load".
    with page.expect_navigation(wait_until="load"):
        page.click('a.card[data-state="queued"]')
    assert page.url.endswith("/console/?state=queued")
    assert page.locator("tbody tr").count() == 1 and page.locator('tr[data-phase="queued"]').count() == 1
    page.goto(url(gw, "/console/?state=sent"))
    assert [page.locator("tbody tr").nth(0).get_attribute("data-job")] == [done_id]
    page.goto(url(gw, "/"))
    # Pseudonymous identifiers only: no patient name, no original UIDs, no calling AE.
    text = page.content()
    assert "TESTPACS" not in text and "SCANNER1" not in text
    assert "1.2.156.112605" not in text
    shot(page, tmp_path, "series", docs=UPDATE_DOCS)
    page.close()


def test_job_page_qc_picture_and_retry(
    browser: object, start_gateway: Callable[..., tuple[Gateway, Callable[[], list[str]]]], tmp_path: Path
) -> None:
    gw, dispatched = start_gateway(allow_retry=True)
    done_id = done_job(gw.spool)
    quarantined_id = quarantined_job(gw.spool)
    page = browser.new_page(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]

    # The QC picture: a real PNG of the worker's size, served from the job folder.
    page.goto(url(gw, "/"))
    page.click(f'a[href="/console/jobs/{done_id}"]')
    # The "load" event waits for images. (wait_for_function would poll with eval, which the
    # console's Content-Security-Policy rightly forbids.)
    page.wait_for_load_state("load")
    assert page.locator("#qc").evaluate("img => img.complete && img.naturalWidth > 0")
    size = page.evaluate("(img => [img.naturalWidth, img.naturalHeight])(document.getElementById('qc'))")
    assert size == list(QC_SIZE)
    assert page.locator("#state").inner_text() == "sent"
    assert "2.25.208123456789012345678901234567890123" in page.locator("dl.facts").inner_text()
    assert page.locator("#history tbody tr").count() == 4
    shot(page, tmp_path, "job", docs=UPDATE_DOCS)
    status, headers, body = fetch(url(gw, f"/console/jobs/{done_id}/qc.png"))
    assert status == 200 and headers["Content-Type"] == "image/png"
    from PIL import Image

    with Image.open(BytesIO(body)) as image:
        assert image.format == "PNG" and image.size == QC_SIZE and image.mode == "RGB"
    assert fetch(url(gw, f"/console/jobs/{quarantined_id}/qc.png"))[0] == 404

    # Quarantine: the reason (original UIDs redacted) and a working Retry.
    page.goto(url(gw, f"/console/jobs/{quarantined_id}"))
    reason = page.locator("#reason").inner_text()
    assert reason.startswith("several stacks in one series") and "[UID]" in reason
    assert "1.2.156.112605" not in page.content()
    shot(page, tmp_path, "quarantined")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#retry")
    page.wait_for_selector("#flash", timeout=10_000)
    assert page.locator("#state").inner_text() == "queued"
    assert page.locator("#retry").count() == 0
    assert set(dispatched()) == {quarantined_id}  # the sealer may also have dispatched it (idempotent task)
    assert gw.spool.load(quarantined_id).state == JobState.dispatched
    assert gw.spool.job_dir(quarantined_id).parent == gw.spool.jobs
    shot(page, tmp_path, "retried")
    page.close()


def test_retry_is_absent_and_refused_without_the_permission(
    browser: object, start_gateway: Callable[..., tuple[Gateway, Callable[[], list[str]]]], tmp_path: Path
) -> None:
    gw, dispatched = start_gateway()  # allow_retry defaults to off
    quarantined_id = quarantined_job(gw.spool)
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(url(gw, f"/console/jobs/{quarantined_id}"))
    assert page.locator("#reason").is_visible()
    assert page.locator("#retry").count() == 0 and page.locator("#retry-disabled").is_visible()
    status, _, _ = fetch(url(gw, f"/console/jobs/{quarantined_id}/retry"), data=b"token=x")
    assert status == 403
    assert not dispatched() and gw.spool.load(quarantined_id).state == JobState.quarantined
    page.close()


def test_login_is_required_when_configured(
    browser: object, start_gateway: Callable[..., tuple[Gateway, Callable[[], list[str]]]], tmp_path: Path
) -> None:
    gw, _ = start_gateway(username="reviewer", password_hash=hash_password("correct horse"))
    done_id = done_job(gw.spool, with_qc=False)
    from playwright.sync_api import Error as PlaywrightError

    # Headless Chromium has no login dialog: it may fail a navigation answered 401 with
    # ERR_INVALID_AUTH_CREDENTIALS. The browser's request API shows the 401 itself.
    def refused_navigation(context: object) -> None:
        page = context.new_page()  # type: ignore[attr-defined]
        try:
            response = page.goto(url(gw, "/"))
        except PlaywrightError as exc:
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        else:
            assert response.status == 401 and done_id not in page.content()

    anonymous = browser.new_context()  # type: ignore[attr-defined]
    refused_navigation(anonymous)
    refused = anonymous.request.get(url(gw, "/"))
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Basic ")
    assert done_id not in refused.text()
    assert anonymous.request.get(url(gw, f"/console/jobs/{done_id}")).status == 401
    anonymous.close()
    wrong = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": "reviewer", "password": "guess"}
    )
    refused_navigation(wrong)
    assert wrong.request.get(url(gw, "/")).status == 401
    wrong.close()
    context = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": "reviewer", "password": "correct horse"}
    )
    page = context.new_page()
    assert page.goto(url(gw, "/")).status == 200
    assert "signed in as reviewer" in page.locator("header").inner_text()
    assert page.locator(f'tr[data-job="{done_id}"]').count() == 1
    shot(page, tmp_path, "login")
    context.close()
    # The other endpoints stay open for the health checks and Prometheus.
    assert fetch(url(gw, "/healthz"))[0] == 200
    token = base64.b64encode(b"reviewer:correct horse").decode()
    assert fetch(url(gw, "/console/"), headers={"Authorization": f"Basic {token}"})[0] == 200
