"""A run's report folder: `index.html` with the figures, every table as CSV, `metrics.json`.

The page reads top-down as a result page: the headline numbers, each beside its baseline and a one-line
reading; then one section per stage with captioned figures; the full metric table last, grouped and
labelled in words. It is one self-contained file (inline CSS, relative links only), so the folder opens
anywhere it is copied. The folder is assembled beside its destination and moved into place in one step,
so a crash never leaves a report that looks complete but is not. A figure a stage did not write is
named in a note instead of stopping the report.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from wbcvae.utils.atomic import atomic_path


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG, atomically (pyplot-free, so no GUI backend is ever needed)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return Path(path)


def write_csv(frame: pd.DataFrame, path: str | Path, index: bool = False) -> Path:
    """Write a table as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)
    return Path(path)


@dataclass(frozen=True)
class Headline:
    """One result at the top of the page: what was measured, its number, what to compare it with, what it means.

    A value with one number per model or path puts each on its own line (`\n`)."""

    result: str
    value: str
    baseline: str
    reading: str


@dataclass(frozen=True)
class Caption:
    """A figure file with the sentence under it (what to look for)."""

    path: str | Path
    text: str = ""


@dataclass
class Section:
    """One heading of the report: prose, figures (PNG/GIF files, bare or with a `Caption`) and tables.

    A paragraph that spans several lines (a printed table) is shown as preformatted text."""

    title: str
    text: str = ""
    figures: Sequence[str | Path | Caption] = ()
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)


def write_report(
    out_dir: str | Path,
    sections: Sequence[Section],
    metrics: Mapping[str, Any],
    title: str = "wbcvae report",
    headlines: Sequence[Headline] = (),
    labels: Mapping[str, str] | None = None,
    group_titles: Mapping[str, str] | None = None,
    max_rows: int = 25,
    folded_rows: int = 15,
) -> Path:
    """Write the report folder atomically and return the path of its `index.html`.

    The full metric table has one group per top-level key of `metrics`, titled by `group_titles`;
    `labels` name the keys inside in words (`{"knn5_acc": "kNN accuracy (k = 5)"}`), one key segment
    at a time; keys without a label are shown with their underscores as spaces. Tables show their first
    `max_rows` rows in the page, folded when longer than `folded_rows`, and link to the full CSV.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        (tmp / "figures").mkdir(parents=True)
        (tmp / "tables").mkdir()
        slugs = [f"{number:02d}-{_slug(section.title)}" for number, section in enumerate(sections, start=1)]
        body = [f"<h1>{html.escape(title)}</h1>"]
        if headlines:
            body.append(_headlines_html(headlines))
        body.append(_contents_html(sections, slugs))
        copied: set[str] = set()
        for slug, section in zip(slugs, sections):
            body.append(_section_html(tmp, slug, section, (max_rows, folded_rows), copied))
        plain = to_jsonable(metrics)
        body.append(_metrics_html(plain, labels or {}, group_titles or {}))
        (tmp / "metrics.json").write_text(json.dumps(plain, indent=2, allow_nan=False) + "\n")
        (tmp / "index.html").write_text(_PAGE.format(title=html.escape(title), style=_STYLE, body="\n".join(body)))
    return out_dir / "index.html"


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN and ±inf to null, paths to strings."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-") or "section"


def _headlines_html(headlines: Sequence[Headline]) -> str:
    rows = "".join(
        f"<tr><th scope=row>{_lines(h.result)}</th><td class=value>{_lines(h.value)}</td>"
        f"<td>{_lines(h.baseline)}</td><td>{_lines(h.reading)}</td></tr>"
        for h in headlines
    )
    head = "<tr class=head><th>result</th><th>measured</th><th>baseline</th><th>reading</th></tr>"
    intro = "Each number beside what chance or a trivial answer would give; the sections below show how it was measured."
    return f'<section id="results"><h2>Results at a glance</h2><p>{intro}</p><div class=wide><table class=headlines>{head}{rows}</table></div></section>'


def _lines(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.split("\n"))


def _contents_html(sections: Sequence[Section], slugs: Sequence[str]) -> str:
    items = [f'<li><a href="#{slug}">{html.escape(s.title)}</a></li>' for slug, s in zip(slugs, sections)]
    items.append('<li><a href="#metrics">All metrics</a></li>')
    return f'<nav><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def _section_html(root: Path, slug: str, section: Section, rows: tuple[int, int], copied: set[str]) -> str:
    parts = [f'<section id="{slug}"><h2>{html.escape(section.title)}</h2>']
    parts += [_paragraph_html(paragraph) for paragraph in section.text.split("\n\n") if paragraph.strip()]
    for figure in section.figures:
        parts.append(_figure_html(root, slug, figure if isinstance(figure, Caption) else Caption(figure), copied))
    max_rows, folded_rows = rows
    for name, table in section.tables.items():
        csv = f"{slug}-{_slug(name)}.csv"
        table.to_csv(root / "tables" / csv, index=False)
        shown = table.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", border=0)
        more = f" (first {max_rows} of {len(table)} rows)" if len(table) > max_rows else ""
        title = f'{html.escape(name)}{more} · <a href="tables/{csv}">CSV</a>'
        if len(table) > folded_rows:
            parts.append(f"<details><summary>table: {title}</summary><div class=wide>{shown}</div></details>")
        else:
            parts.append(f"<h3>{title}</h3><div class=wide>{shown}</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _paragraph_html(paragraph: str) -> str:
    """Prose as a paragraph; a multi-line block (a printed table) as preformatted text, folded when long."""
    if "\n" not in paragraph.strip():
        return f"<p>{html.escape(paragraph.strip())}</p>"
    first, *rest = paragraph.strip("\n").split("\n")
    if len(rest) < 8:
        return f"<pre>{html.escape(paragraph.strip(chr(10)))}</pre>"
    return f"<details><summary>{html.escape(first.strip())}</summary><pre>{html.escape(chr(10).join(rest))}</pre></details>"


def _figure_html(root: Path, slug: str, figure: Caption, copied: set[str]) -> str:
    source = Path(figure.path)
    if not source.is_file():
        return f'<p class=note>Figure not available: {html.escape(source.name)} (the stage did not write it).</p>'
    name, n = f"{slug}-{source.name}", 1
    while name in copied:  # two stages' figures may share a file name (each β-VAE's latent_map_epoch….png)
        n += 1
        name = f"{slug}-{n}-{source.name}"
    copied.add(name)
    shutil.copyfile(source, root / "figures" / name)
    caption = figure.text or source.stem.replace("_", " ")
    return (
        f'<figure><img src="figures/{html.escape(name)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _metrics_html(metrics: Mapping[str, Any], labels: Mapping[str, str], titles: Mapping[str, str]) -> str:
    """Every metric, one table per top-level key (a stage); `a/b` top-level keys nest under `a`."""
    groups, other = [], {}
    for key, value in _nest(metrics).items():
        if isinstance(value, dict) and value:
            groups.append(_group_html(titles.get(key, _label(key, labels)), value, labels))
        else:
            other[key] = value
    if other:
        groups.append(_group_html("Other", other, labels))
    return (
        '<section id="metrics"><h2>All metrics</h2>'
        '<p>Grouped by stage; the same numbers as <a href="metrics.json">metrics.json</a>.</p>'
        + "".join(groups)
        + "</section>"
    )


def _group_html(title: str, values: dict[str, Any], labels: Mapping[str, str]) -> str:
    """A dict of like dicts (one per model or per path) as one table with a column each; else label | value."""
    if len(values) > 1 and all(isinstance(v, dict) for v in values.values()):
        columns = {name: _flatten(v) for name, v in values.items()}
        keys = list(dict.fromkeys(k for flat in columns.values() for k in flat))
        head = "<tr><th></th>" + "".join(f"<th>{html.escape(_label(c, labels))}</th>" for c in columns) + "</tr>"
        rows = "".join(
            f"<tr><td>{html.escape(_label(k, labels))}</td>{''.join(f'<td>{_format(flat.get(k))}</td>' for flat in columns.values())}</tr>"
            for k in keys
        )
    else:
        head = ""
        rows = "".join(f"<tr><td>{html.escape(_label(k, labels))}</td><td>{_format(v)}</td></tr>" for k, v in _flatten(values).items())
    return f"<h3>{html.escape(title)}</h3><div class=wide><table class=metrics>{head}{rows}</table></div>"


def _nest(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """`{"trajectory/a": {...}, "trajectory/b": {...}}` → `{"trajectory": {"a": {...}, "b": {...}}}`."""
    nested: dict[str, Any] = {}
    grouped: set[str] = set()
    for key, value in metrics.items():
        head, _, tail = key.partition("/")
        if tail and (head not in nested or head in grouped):
            grouped.add(head)
            nested.setdefault(head, {})[tail] = value
        elif key in grouped:  # a plain key named like a group joins that group
            nested[key][key] = value
        else:
            nested[key] = value
    return nested


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}{k}/")
        return out
    return {prefix.rstrip("/"): value}


def _label(key: str, labels: Mapping[str, str]) -> str:
    """`val/knn5_acc` → `validation · kNN accuracy (k = 5)` with labels for `val` and `knn5_acc`."""
    return " · ".join(labels.get(part, part.replace("_", " ")) for part in key.split("/"))


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return html.escape(", ".join(map(str, value)) or "–")
    if isinstance(value, dict):
        return "–"
    return html.escape("–" if value is None else str(value))


_STYLE = """
* { box-sizing: border-box; }
body { font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; max-width: 1100px;
       margin: 0 auto; padding: 1.5em 1em 4em; }
h1 { margin: 0 0 0.5em; font-size: 1.8em; }
h2 { border-bottom: 2px solid #8c959f; margin-top: 2.2em; padding-bottom: 0.15em; }
h3 { margin: 1.4em 0 0.4em; font-size: 1.05em; }
p, li, figcaption, summary, h1, h2, h3, td, th { overflow-wrap: break-word; }
a { color: #0550ae; }
nav ol { columns: 2 16em; margin: 0; }
.wide { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.88em; margin-bottom: 0.8em; }
td, th { padding: 3px 10px; border-bottom: 1px solid #d0d7de; text-align: right; vertical-align: top; }
td:first-child, th:first-child { text-align: left; }
table.headlines { font-size: 1em; width: 100%; }
table.headlines td, table.headlines th { text-align: left; padding: 6px 10px; }
table.headlines th[scope=row] { font-weight: normal; width: 30%; }
table.headlines td.value { width: 24%; }
table.headlines td.value + td { width: 20%; }
@media (max-width: 760px) {  /* a phone or half a laptop screen: each result as a block, no sideways scrolling */
  table.headlines tr, table.headlines td, table.headlines th { display: block; width: auto !important; }
  table.headlines tr.head { display: none; }
  table.headlines td, table.headlines th { border: none; padding: 2px 4px; }
  table.headlines tr { border-bottom: 1px solid #d0d7de; padding: 6px 0; }
  table.headlines td:nth-child(3)::before { content: "baseline: "; color: #57606a; }
}
table.headlines td.value { font-weight: 600; color: #0a3069; font-variant-numeric: tabular-nums; }
table.metrics td:first-child { max-width: 32em; }
figure { margin: 1.2em 0; }
img { display: block; max-width: 100%; height: auto; border: 1px solid #eaeef2; }
img[src$=".gif"] { width: 256px; }
figcaption { color: #57606a; font-size: 0.9em; margin-top: 0.35em; max-width: 60em; }
pre { background: #f6f8fa; padding: 0.6em; font-size: 0.8em; overflow-x: auto; }
details { margin: 0.8em 0; }
details summary { cursor: pointer; color: #57606a; }
.note { color: #9a6700; font-style: italic; }
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style></head>
<body>
{body}
</body></html>
"""
