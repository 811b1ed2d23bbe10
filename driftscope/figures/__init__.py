"""Paper-style figures of where federated learning drifts, drawn with seaborn on matplotlib.

Figures read only run files (through :class:`~driftscope.runfile.reader.Run`) and the tidy tables of
:mod:`driftscope.analysis`; they never touch live training objects. Every plotting function takes
runs or tidy data and an optional ``ax`` and returns the Axes it drew on, so figures compose into
panels; :func:`cosine_clustermap` returns seaborn's ``ClusterGrid``. Labels and log scales of
metrics come from :data:`driftscope.metrics.METRICS`, algorithm labels from the algorithm registry.

=============================  ================================================================
function (module)              what it shows
=============================  ================================================================
:func:`layer_profile`          one metric per layer (model order) pooled over rounds exactly as
(``profile``)                  ``driftscope analyze``, bar = middle 50% of single rounds, runs
                               side by side, head region shaded
:func:`layer_heatmap`          one metric, layer x round, for one run
:func:`cka_by_layer` (``cka``) per layer, the distribution of client-pair CKA, runs side by side
:func:`cosine_clustermap`      client x client cosine of one layer's updates, clustered
:func:`accuracy_curves`        test accuracy per round, legend with communication per round
:func:`partition_histogram`    each client's label histogram
:func:`label_alignment_profile`  per layer, how far the clients' update disagreement follows their
(``attribution``)              label histograms; :func:`class_variance_heatmap`: the output
                               layer's update variance per class and round
:func:`chosen_layers_map`      layer x round: share of update variance and the layers that carried
(``chosen_layers``)            control variates (fedpvr_auto's drift-chosen head)
:func:`write_figures`          all of the above that the runs support, as PNG and PDF
=============================  ================================================================

Use :func:`paper_style` (a context manager) or :func:`set_style` for print-ready output.
The tables they draw (``tidy``, ``communication_factor``) come from :mod:`driftscope.analysis.tables`.
"""

from __future__ import annotations

from driftscope.figures.accuracy import accuracy_curves
from driftscope.figures.attribution import class_variance_heatmap, label_alignment_profile
from driftscope.figures.chosen_layers import chosen_layers_map
from driftscope.figures.cka import cka_by_layer
from driftscope.figures.clustermap import cosine_clustermap
from driftscope.figures.labels import algorithm_label, metric_label, run_label, run_labels
from driftscope.figures.partition import partition_histogram
from driftscope.figures.profile import layer_heatmap, layer_profile
from driftscope.figures.style import paper_style, set_style
from driftscope.figures.write import write_figures

__all__ = [
    "accuracy_curves",
    "algorithm_label",
    "chosen_layers_map",
    "cka_by_layer",
    "class_variance_heatmap",
    "cosine_clustermap",
    "label_alignment_profile",
    "layer_heatmap",
    "layer_profile",
    "metric_label",
    "paper_style",
    "partition_histogram",
    "run_label",
    "run_labels",
    "set_style",
    "write_figures",
]
