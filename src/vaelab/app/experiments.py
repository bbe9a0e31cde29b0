"""The studies that end in figures, run end to end for the command line and the Python API:
the study computes (:mod:`vaelab.studies`), this draws (:mod:`vaelab.app.plots`) and
records the result in the run."""
from __future__ import annotations

from pathlib import Path

from ..runs.records import write_result
from ..studies.classify import classify_study
from .plots import efficiency_figure, features_figure


def classify_run(run_dir: str | Path, **kw) -> dict:
    """``vaelab classify`` on a VAE run (the settings of
    :func:`~vaelab.studies.classify.classify_study`): the classifiers' rows, the figures
    RUN/classify/efficiency.png and features.png, and RUN/classify.json."""
    c = classify_study(run_dir, **kw)
    name = c.result["dataset"]
    c.result["figures"] = {
        "efficiency": str(efficiency_figure(c.result["rows"], c.out_dir / "efficiency.png",
                                            name)),
        "features": str(features_figure(c.features, c.labels, c.classes,
                                        c.out_dir / "features.png", c.seed)),
    }
    write_result(run_dir, "classify", "test", c.result)
    return c.result
