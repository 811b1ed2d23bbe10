"""Run files written before the architecture change (tests/fixtures/v1_*.h5) are reproduced.

Each fixture holds its config; training it again with one torch thread gives the same run. What is
held exactly: the layout (parameter names, shapes, offsets), the partition (client sizes, label
histograms), the probe rows, the rounds and participants: integers drawn from the seed, the same on
every CPU. The float results (client updates' Gram matrices, test losses) are compared with a
tolerance, because float32 kernels round differently across CPUs (see ``FLOAT32_ACROSS_KERNELS``).
Test accuracy is a count of correct test images, held to one image per round.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftscope import RunConfig, open_run, train

# float results compared at a rounding tolerance: make test runs these again under other CPU kernels
pytestmark = pytest.mark.kernels

FIXTURES = Path(__file__).parent / "fixtures"

# Why 1e-3, relative to the largest value of each array. The fixtures were written on one CPU; a
# different CPU runs other float32 kernels (AVX-512, AVX2, or the scalar ones), whose sums and
# products group the same terms differently. Each kernel's result then differs in its last bits
# (float32 unit roundoff 2**-24 = 6e-8), and the local training steps carry that difference
# forward: a client update y - x is a small difference of two large vectors, so its relative
# error grows further. Measured on these fixtures (2 rounds, 3 clients, ATEN_CPU_CAPABILITY =
# avx512, avx2, default): up to 3.8e-5 of the largest Gram entry (SCAFFOLD under avx2, ~640 unit
# roundoffs); an entry near zero can be off by 0.2% of itself, so the comparison is scaled by the
# array's largest value, not entry by entry. 1e-3 leaves a margin of 25 over that, and stays far
# below what any real change does: the same config with the next seed moves the Grams by ~0.67.
FLOAT32_ACROSS_KERNELS = 1e-3


def _config(run) -> RunConfig:
    cfg = run.config
    return cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)


def assert_close_to_scale(actual, desired, what: str) -> None:
    """Every entry within FLOAT32_ACROSS_KERNELS of the largest |value| of ``desired``."""
    desired = np.asarray(desired)
    assert np.shape(actual) == desired.shape, what
    scale = float(np.abs(desired).max())
    np.testing.assert_allclose(
        actual, desired, rtol=0, atol=FLOAT32_ACROSS_KERNELS * scale, err_msg=what
    )


@pytest.mark.parametrize("name", ["fedavg", "fedpvr", "scaffold"])
def test_v1_fixture_is_reproduced(tmp_path, digits, name):
    with open_run(FIXTURES / f"v1_{name}.h5") as old:
        cfg = _config(old)
        want = {
            "params": [(p.name, p.shape, p.offset) for p in old.params],
            "layers": [(la.name, la.group, la.numel) for la in old.layers],
            "sizes": old.client_sizes.copy(),
            "histogram": old.label_histogram.to_numpy(),
            "probe": old.probe_index.copy(),
            "rounds": (old.metrics["round"].to_numpy(), old.rounds),
            "participants": old.participants,
            "metrics": old.metrics.copy(),
            "gram": {p.name: old.gram(p.name) for p in old.params},
        }
    path = train(cfg, tmp_path / "again.h5", dataset=digits)
    with open_run(path) as new:
        # integers drawn from the seed: exactly
        assert [(p.name, p.shape, p.offset) for p in new.params] == want["params"]
        assert [(la.name, la.group, la.numel) for la in new.layers] == want["layers"]
        np.testing.assert_array_equal(new.client_sizes, want["sizes"])
        np.testing.assert_array_equal(new.label_histogram.to_numpy(), want["histogram"])
        np.testing.assert_array_equal(new.probe_index, want["probe"])
        np.testing.assert_array_equal(new.metrics["round"], want["rounds"][0])
        np.testing.assert_array_equal(new.rounds, want["rounds"][1])
        np.testing.assert_array_equal(new.participants, want["participants"])
        # a count of test images: a prediction flips only where two logits tie within rounding
        test_size = len(digits.test_y)
        correct = np.rint(new.metrics["test_accuracy"].to_numpy() * test_size)
        want_correct = np.rint(want["metrics"]["test_accuracy"].to_numpy() * test_size)
        assert np.abs(correct - want_correct).max() <= 1, (correct, want_correct)
        # floats: float32 rounding across kernels (FLOAT32_ACROSS_KERNELS)
        assert_close_to_scale(
            new.metrics["test_loss"].to_numpy(), want["metrics"]["test_loss"], "test_loss"
        )
        for p, gram in want["gram"].items():
            assert_close_to_scale(new.gram(p), gram, f"gram {p}")
