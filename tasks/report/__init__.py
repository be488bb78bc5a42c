"""The pages renalflow writes: jinja2 templates (templates/*.html.j2, autoescaped) and
the code that fills them.

- `evaluation`: REPORT/report.html of `renalflow evaluate` (write_html), with the
  vote trade-off and calibration tables it plots;
- `cohort`: OUT/cohort.html of `renalflow cohort-report`, from the results table;
- `plots`: the figures, as PNG data URIs;
- `render`: the one jinja2 environment (also the page of `renalflow web`).
"""

from renalflow.tasks.report.cohort import cohort_report
from renalflow.tasks.report.evaluation import calibration, vote_tradeoff, write_html
from renalflow.tasks.report.render import decimal, percent, render

__all__ = [
    "calibration",
    "cohort_report",
    "decimal",
    "percent",
    "render",
    "vote_tradeoff",
    "write_html",
]
