"""tasks/report/render.py: strict templates and how figures are written."""

from __future__ import annotations

import pytest

from renalflow.tasks.report import decimal, percent, render


def test_a_template_variable_nobody_passed_is_an_error():
    import jinja2

    with pytest.raises(jinja2.UndefinedError, match="model"):
        render("web_page.html.j2", note="", vote_threshold=0.51)


def test_a_figure_a_set_cannot_give_is_written_undefined():
    assert percent(0.1234) == "12.3%" and percent(float("nan")) == "undefined"
    assert percent(None) == "undefined" and decimal(None) == "undefined"
    assert decimal(0.97345) == "0.973"
