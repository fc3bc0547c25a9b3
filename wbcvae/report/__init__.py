"""The report folder a pipeline run ends with: `index.html`, tables as CSV, `metrics.json`."""

from wbcvae.report.html import Caption, Headline, Section, save_figure, to_jsonable, write_csv, write_report

__all__ = ["Caption", "Headline", "Section", "save_figure", "to_jsonable", "write_csv", "write_report"]
