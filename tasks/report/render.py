"""The one jinja2 environment every renalflow page is rendered with.

Templates ship inside the package (`templates/*.html.j2`) and are found through the
package, not a path, so an installed renalflow renders the same pages as a checkout.
Autoescape is always on: a series description, a manufacturer, a patient key or a
model note is text, never markup, whatever it contains. A variable a template names
but nobody passed is an error, not an empty string.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

UNDEFINED = "undefined"
"""How a figure a set cannot give (a one-class set's AUC) is written everywhere."""


def percent(value: float | None) -> str:
    """A share as `12.3%`, or `undefined` (a class absent from the set)."""
    return UNDEFINED if value is None or value != value else f"{100 * value:.1f}%"


def decimal(value: float | None, digits: int = 3) -> str:
    """A figure with `digits` decimals, or `undefined`."""
    return UNDEFINED if value is None or value != value else f"{value:.{digits}f}"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("renalflow.tasks.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["percent"] = percent
    env.filters["decimal"] = decimal
    return env


def render(template: str, **context: Any) -> str:
    """Fill `templates/<template>` with `context`, every value escaped as text."""
    return environment().get_template(template).render(**context)
