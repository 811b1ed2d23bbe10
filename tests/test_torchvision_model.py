"""torchvision's resnet18, as a researcher would bring it: ``train(cfg, out, model=, dataset=,
split=)`` on small random 32x32 tensors with recording and probe CKA on.

Slow (an 11.7M-parameter network, about 10 s on one CPU thread): FedPVR, 2 rounds of 3 clients
with 2 local steps each on a few samples. The run file must be complete and readable, its layers
named by torchvision's module names, and the global BatchNorm buffers the clients' weighted
average.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_config
from torch import nn

from driftscope import open_run, train
from driftscope.analysis.tables import drift_table, layer_summary
from driftscope.data import TensorData
from driftscope.engine.events import Hook
from driftscope.engine.resume_state import BUFFER_STATE
from driftscope.errors import RunFileError

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.slow

SIZES = (8, 12, 16)  # unequal clients (a weighted average differs from the plain mean), whole
# batches of 4: a batch of 2 reaches layer4 (1x1 feature maps) as 2 values per BatchNorm channel,
# whose running statistics then make the eval-mode network overflow float32


def resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.head_prefixes = ("fc",)  # an instance attribute: the declared head of FedPVR
    return model


def random_images(seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    n_train, n_test = sum(SIZES), 16
    x = torch.rand(n_train + n_test, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    return TensorData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=10)


class Keep(Hook):
    """Copies of every client's buffers and of the new global buffers, per round."""

    def __init__(self) -> None:
        self.clients: dict[int, list[tuple[int, dict]]] = {}
        self.global_buffers: dict[int, dict] = {}

    def on_client_end(self, event):
        copy = {k: v.clone() for k, v in event.buffers.items()}
        self.clients.setdefault(event.round, []).append((event.client, copy))

    def on_round_end(self, event):
        self.global_buffers[event.round] = {k: v.clone() for k, v in event.global_buffers.items()}


def test_torchvision_resnet18_runs_two_recorded_rounds(tmp_path):
    split = np.split(np.arange(sum(SIZES)), np.cumsum(SIZES)[:-1])
    cfg = small_config(
        train__rounds=2,
        train__clients=len(SIZES),
        train__local_steps=2,
        train__batch_size=4,
        train__weighting="samples",
        train__algorithm="fedpvr",
        record__probe_size=8,
        record__cka_every=1,
        record__updates_every=1,
        # store the full updates of the head and one block's layers only (resnet18 is 47 MB)
        record__update_layers=("fc.*", "layer1.0.*"),
    )
    path, keep = tmp_path / "resnet18.h5", Keep()
    train(cfg, path, model=resnet18, dataset=random_images(), split=split, hooks=[keep])

    expected = resnet18()
    # a layer = a module owning trainable parameters directly, named as torchvision names it
    names = [n for n, m in expected.named_modules() if list(m.parameters(recurse=False))]
    buffer_names = [n for n, _ in expected.named_buffers()]
    with open_run(path) as run:
        assert run.status == "complete" and run.num_rounds == 2
        assert run.config.model.name == "ResNet" and run.config.data.partition == "custom"
        assert list(run.client_sizes) == list(SIZES)
        assert [ly.name for ly in run.layers] == names
        assert [ly.label for ly in run.layers] == names  # BatchNorm: no short conv1/fc1 labels
        assert run.layer("layer1.0.bn1").kind == "BatchNorm2d"
        assert run.layer("layer1.0.conv1").kind == "Conv2d"
        with pytest.raises(RunFileError):
            run.layer("layer1")  # a container, not a layer: never silently another layer
        assert [ly.name for ly in run.layers if ly.group == "head"] == ["fc"]
        assert run.numel == sum(p.numel() for p in expected.parameters())
        assert run.cka_skipped == {}
        for layer in run.layers:
            cka = run.cka(layer.name)
            assert cka.shape == (2, 4, 4) and np.isfinite(cka).all(), layer.name
        rv = drift_table(run).query("metric == 'relative_variance'")
        assert sorted(zip(rv["round"], rv["layer"])) == sorted(
            (r, n) for r in (0, 1) for n in names
        )
        assert np.isfinite(rv["value"]).all()
        summary = layer_summary(run)
        assert list(summary["layer"]) == names
        assert np.isfinite(summary[["relative_variance", "cka"]].to_numpy()).all()
        # the stored updates: the chosen layers only, each client's row of every round
        assert run.update_rounds.tolist() == [0, 1]
        assert run.updates("fc.weight").shape == (2, 3, 10, 512)
        assert run.updates("layer1.0.bn1").shape == (2, 3, 2 * 64)
        with pytest.raises(RunFileError):
            run.updates("layer2.0.conv1.weight")
        assert np.isfinite(run.metrics["test_accuracy"]).all()
        _, state = run.resume_state()

    sizes = dict(enumerate(SIZES))
    for r in range(2):
        clients = keep.clients[r]
        assert sorted(c for c, _ in clients) == [0, 1, 2]
        assert sorted(keep.global_buffers[r]) == sorted(buffer_names)
        total = sum(sizes[c] for c, _ in clients)
        for name, got in keep.global_buffers[r].items():
            # the slow, obvious average: sum_i n_i / n * b_i in float64
            want = sum(sizes[c] / total * b[name].double() for c, b in clients)
            if name.endswith("num_batches_tracked"):
                # 2 local steps per client and round on top of the global count
                assert int(got) == round(float(want)) == 2 * (r + 1), name
            else:
                # float64 sum rounded once to float32: within one float32 rounding of the value
                assert torch.allclose(got.double(), want, rtol=2e-7, atol=1e-12), name
    # the run file's global buffers are the last round's average
    for name, value in keep.global_buffers[1].items():
        assert np.array_equal(np.asarray(state[BUFFER_STATE + name]), value.numpy()), name
