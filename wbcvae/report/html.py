"""A run's report folder: `index.html` with the figures, every table as CSV, `metrics.json`.

The folder is assembled beside its destination and moved into place in one step, so a crash never
leaves a report that looks complete but is not. Figures are copied in, so the folder can be zipped
and mailed on its own.
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


@dataclass
class Section:
    """One heading of the report: prose, figures (PNG/GIF files) and tables."""

    title: str
    text: str = ""
    figures: Sequence[str | Path] = ()
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)


def write_report(
    out_dir: str | Path,
    sections: Sequence[Section],
    metrics: Mapping[str, Any],
    title: str = "wbcvae report",
    max_rows: int = 25,
) -> Path:
    """Write the report folder atomically and return the path of its `index.html`.

    Tables show their first `max_rows` rows in the page and link to the full CSV.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        (tmp / "figures").mkdir(parents=True)
        (tmp / "tables").mkdir()
        body = [f"<h1>{html.escape(title)}</h1>", _metrics_html(metrics)]
        for number, section in enumerate(sections, start=1):
            body.append(_section_html(tmp, number, section, max_rows))
        (tmp / "metrics.json").write_text(json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n")
        (tmp / "index.html").write_text(_PAGE.format(title=html.escape(title), body="\n".join(body)))
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


def _section_html(root: Path, number: int, section: Section, max_rows: int) -> str:
    slug = f"{number:02d}-{_slug(section.title)}"
    parts = [f'<h2 id="{slug}">{html.escape(section.title)}</h2>']
    if section.text:
        parts += [f"<p>{html.escape(paragraph)}</p>" for paragraph in section.text.split("\n\n")]
    for figure in section.figures:
        figure = Path(figure)
        name = f"{slug}-{figure.name}"
        shutil.copyfile(figure, root / "figures" / name)
        parts.append(f'<figure><img src="figures/{name}" alt="{html.escape(figure.stem)}"></figure>')
    for name, table in section.tables.items():
        csv = f"{slug}-{_slug(name)}.csv"
        table.to_csv(root / "tables" / csv, index=False)
        shown = table.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", border=0)
        more = f" (first {max_rows} of {len(table)} rows)" if len(table) > max_rows else ""
        parts.append(f'<h3>{html.escape(name)}{more} · <a href="tables/{csv}">CSV</a></h3>{shown}')
    return "\n".join(parts)


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_format(v)}</td></tr>" for k, v in _flatten(to_jsonable(metrics)).items()
    )
    return f'<h2>Metrics</h2><table class="metrics">{rows}</table><p><a href="metrics.json">metrics.json</a></p>'


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}{k}/")
        return out
    return {prefix.rstrip("/"): value}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return html.escape(", ".join(map(str, value)) or "–")
    return html.escape("–" if value is None else str(value))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }}
td, th {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
h2 {{ border-bottom: 2px solid #888; margin-top: 2em; }}
</style></head>
<body>
{body}
</body></html>
"""
