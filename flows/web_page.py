"""The single page of `renalflow web` (plain HTML, CSS and JavaScript, no build step).

The page is the template `web_page.html.j2` of renalflow.tasks.report, rendered with
autoescape like every page renalflow writes.
"""

from __future__ import annotations

from renalflow.tasks.config import VOTE_THRESHOLD
from renalflow.tasks.report import render


def render_page(
    model: str, note: str = "", vote_threshold: float = VOTE_THRESHOLD, selection: str = ""
) -> str:
    """The page, naming the model (`version (profile)`), a note under it and how slices
    are selected; all are shown as text, whatever they contain."""
    return render(
        "web_page.html.j2",
        model=model,
        note=note,
        vote_threshold=vote_threshold,
        selection=selection,
    )
