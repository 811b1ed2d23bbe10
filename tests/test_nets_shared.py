"""SmallCNN (2-D) and CNN1D (1-D) are built by one shared builder; their initialisation must stay
bit-identical to the two hand-written classes they replaced (copied here as the reference), so
runs with a fixed seed do not change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from driftscope.models.nets import MLP, SmallCNN
from driftscope.models.nets_1d import CNN1D

# float results compared at a rounding tolerance: make test runs these again under other CPU kernels
pytestmark = pytest.mark.kernels


def _he(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> None:
    for module in model.modules():
        if isinstance(module, kinds):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ReferenceSmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(4 * w, 4 * w),
            nn.ReLU(),
            nn.Linear(4 * w, 4 * w),
            nn.ReLU(),
            nn.Linear(4 * w, num_classes),
        )
        _he(self, (nn.Conv2d, nn.Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ReferenceCNN1D(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, kernel: int = 5):
        super().__init__()
        w, k, p = width, kernel, kernel // 2
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, w, k, padding=p),
            nn.ReLU(),
            nn.Conv1d(w, 2 * w, k, padding=p),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(2 * w, 4 * w, k, padding=p),
            nn.ReLU(),
            nn.Conv1d(4 * w, 4 * w, k, padding=p),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(4 * w, 4 * w),
            nn.ReLU(),
            nn.Linear(4 * w, 4 * w),
            nn.ReLU(),
            nn.Linear(4 * w, num_classes),
        )
        _he(self, (nn.Conv1d, nn.Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.flatten(2)
        return self.classifier(self.features(x))


class ReferenceMLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 200) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, num_classes)
        _he(self, (nn.Linear,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _same(a: nn.Module, b: nn.Module) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert list(pa) == list(pb)  # names and order: the run file's layout
    for name in pa:
        assert pa[name].shape == pb[name].shape and torch.equal(pa[name], pb[name]), name
    assert str(a).replace(type(a).__name__, "") == str(b).replace(type(b).__name__, "")


CASES = [
    (SmallCNN, ReferenceSmallCNN, (1, 10), (2, 1, 8, 8)),
    (SmallCNN, ReferenceSmallCNN, (3, 100), (2, 3, 32, 32)),
    (CNN1D, ReferenceCNN1D, (1, 10), (2, 1, 1, 40)),
    (CNN1D, ReferenceCNN1D, (2, 5), (2, 2, 24)),
    (MLP, ReferenceMLP, (64, 10), (2, 1, 8, 8)),
]


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(("cls", "ref", "args", "shape"), CASES)
def test_initialisation_and_outputs_equal_the_reference(cls, ref, args, shape, seed):
    torch.manual_seed(seed)
    model = cls(*args)
    after = torch.rand(3)  # the generator is left where the reference leaves it
    torch.manual_seed(seed)
    want = ref(*args)
    assert torch.equal(after, torch.rand(3))
    _same(model, want)
    x = torch.randn(shape)
    assert torch.equal(model(x), want(x))
