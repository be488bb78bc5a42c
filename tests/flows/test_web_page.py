"""flows/web_page.py: the upload page names its model as text, never as markup."""

from __future__ import annotations

from tests.factory import ESCAPED, HOSTILE


def test_web_page_names_the_model_as_text():
    from renalflow.flows.web_page import render_page

    page = render_page(f"v1 ({HOSTILE})", f"note {HOSTILE}", vote_threshold=0.6)
    assert "<script>alert" not in page and f"Model v1 ({ESCAPED})." in page
    assert f"A research tool, not a diagnosis. note {ESCAPED}" in page
    assert "the vote threshold\n(60%) of the slices are" in page
    assert 'fetch("/api/score"' in page and "const esc = (s) =>" in page  # the script, unescaped
