"""The web console: series list, per-job page with the QC picture, quarantine retry.

Served by the gateway's :class:`gateway.status.StatusServer` under ``/`` and
``/console/...``; server-rendered HTML (``string.Template`` + ``html.escape``), one
small script. Everything shown comes from the spool (job manifests, folders);
no DICOM header is read, so only pseudonymous identifiers can appear: job ids,
series keys, output series UIDs. The calling AE title is shown only with the
honest-broker permission (``console.honest_broker``).

Security:

* Read-only unless ``console.allow_retry`` is on (then one POST route, with a
  per-process CSRF token and an Origin check).
* HTTP Basic login whenever ``console.username``/``password_hash`` are set; a
  console on an address other than loopback without them refuses to start
  (:class:`ConsoleConfigError`). Passwords are kept as scrypt or PBKDF2 hashes
  (make one with ``python -m gateway.console hash-password``).
* Content-Security-Policy without inline script or style, X-Frame-Options DENY,
  ``Cache-Control: no-store``.

:meth:`Console.handle` takes a request and returns a :class:`Response`, so it is
tested without a socket; the HTTP server only routes to it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import secrets
import statistics
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from common.logs import get_logger
from config.settings import Settings
from gateway.console_assets import CSS, JS, PAGE
from gateway.console_auth import check_exposure, hash_password, same_origin, verify_password
from spool.manifest import JobState
from spool.report import (
    Phase,
    SeriesRow,
    count_by_phase,
    format_duration,
    format_time,
    phase_of,
    row_of,
    snapshot,
)
from spool.store import Spool

log = get_logger("pediface.gateway.console")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make form POSTs send Origin: null
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

MAX_BODY_BYTES = 16 * 1024

MAX_ROWS = 500


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


class Console:
    """Pages and the retry action over one spool. Thread-safe: the HTTP server is threaded."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        dispatch: Callable[[str], None],
        queue_depth: Callable[[], int | None] | None = None,
        host: str | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.console
        self.host = host if host is not None else settings.metrics.host
        check_exposure(self.host, self.config)
        self.spool = spool
        self.dispatch = dispatch
        self.queue_depth = queue_depth
        self._csrf_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def login_required(self) -> bool:
        return self.config.username is not None and self.config.password_hash is not None

    @staticmethod
    def handles(path: str) -> bool:
        path = urlsplit(path).path
        return path in ("/", "/console") or path.startswith("/console/")

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Answer one request (``target`` is the request line's path with its query string)."""
        try:
            response = self._route(method, target, headers, body)
        except Exception:  # noqa: BLE001 - never show a traceback (or a path) to the browser
            log.exception("console_error", method=method, path=urlsplit(target).path)
            response = self._error(500, "Internal error", "The console could not answer; see the log.")
        response.headers = {**SECURITY_HEADERS, **response.headers}
        return response

    def _route(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        user = self._authenticate(headers)
        if user is None:
            return Response(
                401,
                b"login required\n",
                "text/plain; charset=utf-8",
                {"WWW-Authenticate": 'Basic realm="pediface console", charset="UTF-8"'},
            )
        if path == "/console":
            return Response(308, b"", "text/plain", {"Location": "/console/"})
        if path == "/console/console.css":
            return Response(200, CSS, "text/css; charset=utf-8")
        if path == "/console/console.js":
            return Response(200, JS, "text/javascript; charset=utf-8")
        segments = [s for s in path.split("/") if s]
        if method == "POST":
            if len(segments) == 4 and segments[:2] == ["console", "jobs"] and segments[3] == "retry":
                return self._retry(segments[2], headers, body, user)
            return self._error(405, "Method not allowed", "Only retry accepts POST.", {"Allow": "GET"})
        if method not in ("GET", "HEAD"):
            return self._error(405, "Method not allowed", "", {"Allow": "GET"})
        if path in ("/", "/console/"):
            return self._series_list(query, user)
        if len(segments) == 3 and segments[:2] == ["console", "jobs"]:
            return self._job_page(segments[2], query, user)
        if len(segments) == 4 and segments[:2] == ["console", "jobs"] and segments[3] == "qc.png":
            return self._qc_png(segments[2])
        return self._error(404, "Not found", "No such page.")

    # -- authentication ------------------------------------------------------------------------

    def _authenticate(self, headers: Mapping[str, str]) -> str | None:
        """The user name, ``""`` when no login is configured, ``None`` when the request must log in."""
        if not self.login_required:
            return ""
        header = headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        fingerprint = hashlib.sha256(value.strip().encode("ascii", "replace")).digest()
        with self._lock:
            if fingerprint in self._verified:
                self._verified.move_to_end(fingerprint)
                return self._verified[fingerprint]
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            username, sep, password = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        assert self.config.username is not None and self.config.password_hash is not None
        name_ok = hmac.compare_digest(username.encode("utf-8"), self.config.username.encode("utf-8"))
        password_ok = verify_password(password, self.config.password_hash.get_secret_value())
        if not (sep and name_ok and password_ok):
            log.warning("console_login_failed")
            return None
        with self._lock:  # the hash is slow on purpose: remember good credentials for this process
            self._verified[fingerprint] = username
            while len(self._verified) > 64:
                self._verified.popitem(last=False)
        return username

    def _csrf_token(self, job_id: str) -> str:
        return hmac.new(self._csrf_key, f"retry:{job_id}".encode(), hashlib.sha256).hexdigest()

    # -- pages ---------------------------------------------------------------------------------

    def _page(
        self,
        title: str,
        content: str,
        user: str,
        status: int = 200,
        refresh_s: int = 0,
        headers: dict[str, str] | None = None,
    ) -> Response:
        who = f"signed in as {_e(user)}" if user else "local (no login)"
        footer = " Honest-broker view: calling AE titles shown." if self.config.honest_broker else ""
        footer += " Retry permitted." if self.config.allow_retry else " Read-only."
        body = PAGE.substitute(
            title=_e(title),
            content=content,
            who=who,
            footer=_e(footer),
            body_attrs=f' data-refresh="{refresh_s}"' if refresh_s else "",
        )
        return Response(status, body.encode("utf-8"), headers=headers or {})

    def _error(self, status: int, title: str, text: str, headers: dict[str, str] | None = None) -> Response:
        back = '<p><a href="/console/">Back to the series list</a></p>'
        content = f"<h1>{_e(title)}</h1><p>{_e(text)}</p>{back}"
        return self._page(title, content, "", status=status, headers=headers)

    def _series_list(self, query: dict[str, list[str]], user: str) -> Response:
        wanted = (query.get("state") or ["all"])[0] or "all"
        if wanted != "all" and wanted not in Phase.__members__:
            return self._error(400, "Bad request", f"Unknown state {wanted!r}.")
        refresh = 0
        try:
            refresh = max(0, min(3600, int((query.get("refresh") or ["0"])[0] or 0)))
        except ValueError:
            pass
        rows = snapshot(self.spool)
        counts = count_by_phase(rows)
        shown = [r for r in rows if wanted == "all" or r.phase.value == wanted]

        def card(state: str, label: str, n: int) -> str:
            active = " active" if state == wanted else ""
            href = "/console/" if state == "all" else f"/console/?state={state}"
            return (
                f'<a class="card{active}" href="{href}" data-state="{state}">'
                f'<span class="n">{n}</span><span class="l">{_e(label)}</span></a>'
            )

        cards = [card("all", "all series", len(rows))]
        cards += [card(phase.value, phase.value, counts[phase]) for phase in Phase]
        sent_durations = [r.duration_s for r in rows if r.phase == Phase.sent and r.duration_s is not None]
        depth = self.queue_depth() if self.queue_depth is not None else None
        facts = [
            f"queue depth <b>{_e(depth) if depth is not None else 'unknown'}</b>",
            f"median time to delivery <b>{_e(format_duration(statistics.median(sent_durations)))}</b>"
            if sent_durations
            else "no series delivered yet",
            f"series complete after <b>{_e(format_duration(self.settings.series.quiet_period_s))}</b> quiet",
        ]
        ae_head = "<th>calling AE</th>" if self.config.honest_broker else ""
        body_rows = []
        for row in shown[:MAX_ROWS]:
            body_rows.append(self._list_row(row))
        if not shown:
            span = 10 if self.config.honest_broker else 9
            where = "" if wanted == "all" else " in this state"
            body_rows.append(f'<tr><td colspan="{span}" class="muted">No series{where}.</td></tr>')
        more = ""
        if len(shown) > MAX_ROWS:
            more = f'<p class="muted">Showing the newest {MAX_ROWS} of {len(shown)}.</p>'
        content = f"""<h1>Series{"" if wanted == "all" else f" · {_e(wanted)}"}</h1>
<nav class="cards">{"".join(cards)}</nav>
<p class="muted">{" · ".join(facts)}</p>
<table id="series">
<thead><tr><th>state</th><th>series key</th><th>job</th>{ae_head}<th>instances</th><th>sent</th>
<th>started (UTC)</th><th>last change</th><th>duration</th><th>reason</th></tr></thead>
<tbody>
{"".join(body_rows)}
</tbody>
</table>{more}"""
        return self._page("Series", content, user, refresh_s=refresh)

    def _list_row(self, row: SeriesRow) -> str:
        job = (
            f'<a class="mono" href="/console/jobs/{_e(row.job_id)}">{_e(row.job_id)}</a>'
            if row.job_id
            else '<span class="muted">receiving</span>'
        )
        ae = f"<td>{_e(row.calling_ae)}</td>" if self.config.honest_broker else ""
        last = f"{format_duration(row.idle_s)} ago" if row.idle_s is not None else "-"
        reason = _e((row.reason_code or "") if row.phase in (Phase.quarantined, Phase.dropped) else "")
        key = _e(row.series_key) if row.series_key else '<span class="muted">refused at the edge</span>'
        return (
            f'<tr data-phase="{row.phase.value}" data-job="{_e(row.job_id or "")}" '
            f'data-series="{_e(row.series_key)}">'
            f'<td><span class="state state-{row.phase.value}">{row.phase.value}</span></td>'
            f'<td class="mono">{key}</td><td>{job}</td>{ae}'
            f'<td class="num">{row.n_instances}</td><td class="num">{row.n_sent if row.job_id else ""}</td>'
            f"<td>{_e(format_time(row.started_at))}</td><td>{_e(last)}</td>"
            f"<td>{_e(format_duration(row.duration_s))}</td><td>{reason}</td></tr>"
        )

    def _find(self, job_id: str) -> tuple[SeriesRow, Path] | None:
        try:
            job_dir = self.spool.job_dir(job_id)
            manifest = self.spool.load(job_id)
        except (ValueError, FileNotFoundError):
            return None
        return row_of(manifest, job_dir), job_dir

    def _job_page(self, job_id: str, query: dict[str, list[str]], user: str) -> Response:
        found = self._find(job_id)
        if found is None:
            return self._error(404, "Not found", "No such job (it may have been purged).")
        row, _ = found
        flash = ""
        retried = (query.get("retried") or [""])[0]
        if retried == "dispatched":
            flash = '<p class="flash" id="flash">Retry requested: back in the queue and dispatched.</p>'
        elif retried == "queued":
            flash = (
                '<p class="flash" id="flash">Retry requested: back in the queue; the broker did not take it '
                "now, so the gateway will dispatch it on its next pass.</p>"
            )
        facts = [
            ("state", f'<span class="state state-{row.phase.value}" id="state">{row.phase.value}</span>'),
            ("series key", f'<span class="mono">{_e(row.series_key) or "(refused at the edge)"}</span>'),
        ]
        if self.config.honest_broker:
            facts.append(("calling AE", _e(row.calling_ae)))
        facts += [
            ("instances received", str(row.n_instances)),
            ("instances sent", str(row.n_sent)),
            ("attempts", str(row.attempts)),
            ("output series UID", f'<span class="mono">{_e(row.output_series_uid or "-")}</span>'),
            ("started (UTC)", _e(format_time(row.started_at))),
            ("last change (UTC)", _e(format_time(row.changed_at))),
            ("duration", _e(format_duration(row.duration_s))),
        ]
        facts += [(f"destination {_e(name)}", _e(text)) for name, text in sorted(row.deliveries.items())]
        if row.timings:
            stages = ", ".join(f"{_e(stage)} {seconds:.1f} s" for stage, seconds in row.timings.items())
            facts.append(("seconds by stage", stages))
        fact_html = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
        quarantine = ""
        if row.phase == Phase.quarantined:
            if self.config.allow_retry:
                action = (
                    f'<form method="post" action="/console/jobs/{_e(row.job_id)}/retry" id="retry-form" '
                    'data-confirm="Move this series back to the queue and process it again?">'
                    f'<input type="hidden" name="token" value="{self._csrf_token(row.job_id or "")}">'
                    '<button type="submit" id="retry">Retry</button></form>'
                )
            else:
                action = (
                    '<p class="muted" id="retry-disabled">'
                    "Retry is not permitted here (console.allow_retry).</p>"
                )
            quarantine = f"""<h2>Quarantine</h2>
<div class="reason"><p><b>Reason</b> <code>{_e(row.reason_code or "-")}</code></p>
<p id="reason">{_e(row.reason or "-")}</p>{action}</div>"""
        if row.has_qc:
            qc = (
                f'<img class="qc" id="qc" src="/console/jobs/{_e(row.job_id)}/qc.png" width="960" '
                'height="660" alt="before/after: mid-sagittal slice, front and side surface renders, '
                'mask outlined">'
                '<p class="muted">Top: before; bottom: after. Red outline: the face mask; yellow: the ears.'
                "</p>"
            )
        else:
            qc = '<p class="muted" id="no-qc">No QC picture for this job (yet).</p>'
        history = "".join(
            f"<tr><td>{_e(format_time(change.at))}</td>"
            f'<td><span class="state state-{_e(_phase_name(change.state))}">'
            f"{_e(change.state.value)}</span></td>"
            f"<td>{_e(change.note)}</td></tr>"
            for change in row.history
        )
        content = f"""{flash}<h1>Job <span class="mono">{_e(row.job_id)}</span></h1>
<div class="layout">
<section>
<dl class="facts">{fact_html}</dl>
{quarantine}
<h2>History</h2>
<table id="history"><thead><tr><th>at (UTC)</th><th>state</th><th>note</th></tr></thead>
<tbody>{history}</tbody></table>
</section>
<section>
<h2>QC picture</h2>
{qc}
</section>
</div>
<p><a href="/console/">← all series</a></p>"""
        return self._page(f"Job {job_id}", content, user)

    def _qc_png(self, job_id: str) -> Response:
        try:
            path = self.spool.job_dir(job_id) / "qc.png"
            data = path.read_bytes()
        except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return Response(404, b"no QC picture\n", "text/plain; charset=utf-8")
        return Response(200, data, "image/png")

    # -- the one action ------------------------------------------------------------------------

    def _retry(self, job_id: str, headers: Mapping[str, str], body: bytes, user: str) -> Response:
        if not self.config.allow_retry:
            return self._error(403, "Forbidden", "Retry is not permitted here (console.allow_retry is off).")
        if not same_origin(headers):
            return self._error(403, "Forbidden", "Cross-site request refused.")
        token = (parse_qs(body.decode("ascii", "replace")).get("token") or [""])[0]
        if not hmac.compare_digest(token.encode(), self._csrf_token(job_id).encode()):
            return self._error(403, "Forbidden", "The form has expired; reload the page and try again.")
        try:
            manifest = self.spool.retry(job_id)
        except (FileNotFoundError, ValueError):
            return self._error(409, "Not in quarantine", "This job is not in quarantine (any more).")
        outcome = "dispatched"
        try:
            self.dispatch(job_id)
        except Exception as exc:  # noqa: BLE001 - broker down: the sealer dispatches sealed jobs later
            outcome = "queued"
            log.warning("console_retry_not_dispatched", job=job_id, error=str(exc))
        else:
            self.spool.save(manifest.to(JobState.dispatched, "retry dispatched from the console"))
        log.info("job_retry_requested", job=job_id, via="console", user=user or None, outcome=outcome)
        return Response(303, b"", "text/plain", {"Location": f"/console/jobs/{job_id}?retried={outcome}"})


def _phase_name(state: JobState) -> str:
    phase = phase_of(state)
    return phase.value if phase is not None else state.value


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.console hash-password [--pbkdf2]``: print a hash for console.password_hash."""
    import argparse
    import getpass
    import sys

    parser = argparse.ArgumentParser(prog="python -m gateway.console")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("hash-password", help="read a password, print its hash for console.password_hash")
    cmd.add_argument("--pbkdf2", action="store_true", help="PBKDF2-SHA256 instead of scrypt")
    cmd.add_argument("--stdin", action="store_true", help="read the password from standard input")
    args = parser.parse_args(argv)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    try:
        print(hash_password(password, "pbkdf2_sha256" if args.pbkdf2 else "scrypt"))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
