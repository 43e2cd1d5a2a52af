"""The report page's frame: its HTML template, its CSS, the script that records errors, and the small HTML pieces
every part of the page is made of (a section, a note)."""

from __future__ import annotations

import html


def section(anchor: str, heading: str, body: str) -> str:
    """One titled part of the page; `anchor` is its element id, for links and tests."""
    return f'<section id="{anchor}">\n<h2>{html.escape(heading)}</h2>\n{body}\n</section>'


def note(text: str) -> str:
    """A grey sentence that stands in for something the study cannot show yet (too few trials, no images)."""
    return f'<p class="note">{html.escape(text)}</p>'


# Records script errors into the page, where a person (and a headless browser's DOM dump) can see them.
ERROR_RECORDER = """window.addEventListener("error", function (event) {
  var note = document.createElement("pre");
  note.className = "js-error";
  note.textContent = "script error: " + event.message;
  (document.body || document.documentElement).appendChild(note);
});"""

CSS = """body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } th, td { padding: 4px 8px; text-align: left; vertical-align: top; }
table.summary th { color: #555; font-weight: normal; }
table.top td, table.top th { border-bottom: 1px solid #eee; font-size: 0.9em; }
tr.infeasible { color: #999; } tr.chosen { background: #eef6ee; }
table.grid img { image-rendering: pixelated; max-width: 384px; height: auto; display: block; }
figure { margin: 0; } figcaption, .note { color: #666; font-size: 0.85em; }
.js-error { color: #b00; background: #fee; padding: 4px; }"""

# str.format fields: title (escaped), error_recorder, css, plotly (plotly.js itself), summary, sections.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<script>{error_recorder}</script>
<style>{css}</style>
<script>{plotly}</script>
</head>
<body>
<h1>{title}</h1>
{summary}
{sections}
</body>
</html>
"""
