"""The dashboard's HTML: one small page per route; ``static/app.js`` fills it from the JSON API.

Example:
    >>> "<title>Fitstream — runs</title>" in render("runs", {}, {})
    True
"""

from __future__ import annotations

import html
import json

TITLES = {"runs": "runs", "run": "run", "compare": "compare", "models": "models"}


def _script_json(value: object) -> str:
    """JSON that cannot end its <script> element (``</script>``) nor open a comment."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(page: str, path_params: dict[str, str], query: dict[str, str]) -> str:
    """The HTML of ``page`` (runs, run, compare, models); what it shows comes from the API."""
    context = {
        "page": page,
        **path_params,
        **{k: v for k, v in query.items() if k in ("runs", "status", "name", "sweep")},
    }
    subject = path_params.get("run_id", "")
    title = f"Fitstream — {TITLES[page]}" + (f" {subject[:12]}" if subject else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="/static/uPlot.min.css"><link rel="stylesheet" href="/static/style.css">
<link rel="icon" href="data:,">
</head><body data-page="{html.escape(page)}">
<nav><b>Fitstream</b> <a href="/">runs</a> <a href="/models">models</a> <span id="live"></span></nav>
<main id="main"><p class="muted">loading…</p></main>
<script id="context" type="application/json">{_script_json(context)}</script>
<script src="/static/uPlot.iife.min.js"></script><script src="/static/app.js"></script>
</body></html>"""
