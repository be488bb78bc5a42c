"""tasks/report/plots.py: figures as self-contained images that say what they show."""

from __future__ import annotations

import base64
import io

from PIL import Image

from renalflow.tasks.report.plots import confusion_plot


def test_the_confusion_matrix_is_an_embedded_png_at_the_threshold_used(monkeypatch):
    titles: list[str] = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.set_title

    def keep(self, label, *args, **kwargs):
        titles.append(label)
        return original(self, label, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", keep)
    src = confusion_plot({"tp": 10, "fn": 2, "fp": 3, "tn": 25}, 0.35)
    assert src.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.format == "PNG" and image.size[0] > 100
    assert titles == ["Images at threshold 0.35"]
