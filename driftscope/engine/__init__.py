"""What every engine shares: the assembly of a run (:mod:`~driftscope.engine.setup`) and its
lifecycle (:mod:`~driftscope.engine.lifecycle`: hooks, status, run file, progress).

The in-process engine (:mod:`driftscope.engine.inprocess`), :func:`driftscope.train`, the Flower server
and ClientApps (:mod:`driftscope.flower`) are built on these, so a run is assembled and ended in
one way whichever engine moves the messages.
"""
