"""Run files written before the architecture change (tests/fixtures/v1_*.h5) are reproduced.

Each fixture holds its config; training it again on the same machine and thread count (one torch
thread) must give the same test accuracy and the same Gram matrices of the client updates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftscope import RunConfig, open_run, train

FIXTURES = Path(__file__).parent / "fixtures"


def _config(run) -> RunConfig:
    cfg = run.config
    return cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)


@pytest.mark.parametrize("name", ["fedavg", "fedpvr", "scaffold"])
def test_v1_fixture_is_reproduced(tmp_path, digits, name):
    with open_run(FIXTURES / f"v1_{name}.h5") as old:
        cfg = _config(old)
        want_acc = old.metrics["test_accuracy"].to_numpy()
        params = [p.name for p in old.params]
        want_gram = {p: old.gram(p) for p in params}
    path = train(cfg, tmp_path / "again.h5", dataset=digits)
    with open_run(path) as new:
        np.testing.assert_allclose(new.metrics["test_accuracy"].to_numpy(), want_acc, rtol=1e-6)
        assert [p.name for p in new.params] == params
        for p in params:
            np.testing.assert_allclose(new.gram(p), want_gram[p], rtol=1e-6)
