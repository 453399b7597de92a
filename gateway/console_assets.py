"""The console's page frame, style sheet and one small script (files: the CSP allows no inline code)."""

from __future__ import annotations

from string import Template

PAGE = Template(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · pediface</title>
<link rel="stylesheet" href="/console/console.css">
<script src="/console/console.js" defer></script>
</head>
<body$body_attrs>
<header>
  <a class="brand" href="/console/">pediface</a>
  <span class="sub">gateway console</span>
  <span class="who">$who</span>
</header>
<main>
$content
</main>
<footer>Pseudonymous identifiers only: job ids, series keys and output series UIDs.$footer</footer>
</body>
</html>
"""
)

CSS = b"""
:root { --fg:#1d2430; --muted:#5b6575; --line:#d9dee6; --bg:#f6f7f9; --card:#fff; --accent:#1f5fbf; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header { display:flex; gap:1rem; align-items:baseline; padding:.7rem 1.2rem; background:#17233a; color:#fff; }
header a.brand { color:#fff; font-weight:700; font-size:1.15rem; text-decoration:none; }
header .sub { color:#b8c4d8; } header .who { margin-left:auto; color:#b8c4d8; }
main { padding:1rem 1.2rem; max-width:1400px; }
footer { padding:1rem 1.2rem; color:var(--muted); font-size:12px; }
h1 { font-size:1.3rem; margin:.2rem 0 .8rem; } h2 { font-size:1.05rem; margin:1.4rem 0 .5rem; }
a { color:var(--accent); }
.cards { display:flex; flex-wrap:wrap; gap:.6rem; margin-bottom:1rem; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:.5rem .9rem;
        min-width:8.5rem; text-decoration:none; color:var(--fg); }
.card .n { font-size:1.4rem; font-weight:700; display:block; } .card .l { color:var(--muted); }
.card.active { border-color:var(--accent); box-shadow:0 0 0 2px #1f5fbf33; }
table { border-collapse:collapse; width:100%; background:var(--card); border:1px solid var(--line); }
th, td { text-align:left; padding:.35rem .6rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef1f5; font-weight:600; white-space:nowrap; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
code, .mono { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:12.5px; }
.state { display:inline-block; padding:.05rem .5rem; border-radius:999px; font-size:12px; font-weight:600; }
.state-receiving { background:#e7f0ff; color:#1f4f99; } .state-queued { background:#fff4d6; color:#7a5a00; }
.state-processing { background:#e8e3ff; color:#4b2fa6; } .state-sent { background:#e2f6e7; color:#1b6b33; }
.state-quarantined { background:#fde4e4; color:#9b1c1c; }
.state-dropped { background:#eceef1; color:#4a5260; }
dl.facts { display:grid; grid-template-columns:max-content auto; gap:.25rem 1.2rem; background:var(--card);
           border:1px solid var(--line); padding:.8rem 1rem; border-radius:6px; }
dl.facts dt { color:var(--muted); } dl.facts dd { margin:0; }
.reason { background:#fff5f5; border:1px solid #f3c4c4; border-radius:6px; padding:.7rem 1rem; }
.flash { background:#e2f6e7; border:1px solid #a9dcb7; border-radius:6px; padding:.5rem 1rem;
         margin-bottom:1rem; }
.muted { color:var(--muted); }
button { font:inherit; padding:.35rem 1rem; border-radius:5px; border:1px solid #9b1c1c; background:#b42323;
         color:#fff; cursor:pointer; }
img.qc { display:block; background:#000; border:1px solid var(--line); max-width:100%; height:auto; }
.layout { display:flex; flex-wrap:wrap; gap:1.5rem; } .layout > section { flex:1 1 420px; }
"""

JS = b"""'use strict';
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('form[data-confirm]').forEach(function (form) {
    form.addEventListener('submit', function (event) {
      if (!window.confirm(form.getAttribute('data-confirm'))) { event.preventDefault(); }
    });
  });
  var seconds = parseInt(document.body.getAttribute('data-refresh') || '0', 10);
  if (seconds > 0) { window.setTimeout(function () { window.location.reload(); }, seconds * 1000); }
});
"""
