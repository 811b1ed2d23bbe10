"""Label attribution figures draw what the tables say, and write files."""

import matplotlib.pyplot as plt
import numpy as np

from driftscope import open_run
from driftscope.analysis.attribution import class_variance_table, label_alignment_summary
from driftscope.figures.attribution import (
    class_variance_heatmap,
    label_alignment_profile,
    write_attribution_figures,
)


def test_profile_and_heatmap(make_run):
    with open_run(make_run("fedavg")) as run:
        ax = label_alignment_profile(run, permutations=20)
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == [ly.label for ly in run.layers]
        bold = {t.get_text() for t in ax.get_xticklabels() if t.get_fontweight() == "bold"}
        assert bold == {ly.label for ly in run.layers if ly.group == "head"}
        diamonds = next(line for line in ax.get_lines() if line.get_marker() == "D")
        summary = label_alignment_summary(run, permutations=20)
        np.testing.assert_allclose(
            diamonds.get_ydata(), summary["label_alignment_cumulative"].to_numpy()
        )
        # every mark is in the legend, and the x axis is labelled
        assert [t.get_text() for t in ax.get_legend().texts] == [
            "one round, p \u2264 0.05",
            "one round, p > 0.05",
            "median, middle 50% of rounds",
            "updates summed over all rounds",
        ]
        assert ax.get_xlabel() == "layer"
        plt.close(ax.figure)

        table = class_variance_table(run)
        ax = class_variance_heatmap(run, table=table)
        mesh = ax.collections[0].get_array()
        assert mesh.size == run.label_histogram.shape[1] * len(run.update_rounds)
        np.testing.assert_allclose(np.asarray(mesh).reshape(10, -1).sum(axis=0), 1.0)
        plt.close(ax.figure)


def test_write(make_run, tmp_path):
    with open_run(make_run("fedavg")) as run:
        paths = write_attribution_figures(run, tmp_path)
    assert sorted(p.name for p in paths) == [
        "class_variance_heatmap.pdf",
        "class_variance_heatmap.png",
        "label_alignment_profile.pdf",
        "label_alignment_profile.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
