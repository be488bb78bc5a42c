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


def percent(value: float) -> str:
    """A share as `12.3%`, or `n/a` for NaN (a class absent from the set)."""
    return "n/a" if value != value else f"{100 * value:.1f}%"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("renalflow.tasks.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["percent"] = percent
    return env


def render(template: str, **context: Any) -> str:
    """Fill `templates/<template>` with `context`, every value escaped as text."""
    return environment().get_template(template).render(**context)
