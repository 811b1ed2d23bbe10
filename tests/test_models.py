import pytest
import torch

from driftscope.algorithms import build_algorithm
from driftscope.config import TrainConfig
from driftscope.errors import ConfigError
from driftscope.models.registry import MODELS, build_model, model_layout


def test_vgg11_matches_the_paper():
    for classes, total in ((10, 9_750_922), (100, 9_797_092)):
        model = build_model("vgg11", (3, 32, 32), classes)
        layout = model_layout(model)
        assert layout.numel == sum(p.numel() for p in model.parameters()) == total
        assert [ly.label for ly in layout.layers] == [f"conv{i}" for i in range(1, 9)] + [
            "fc1",
            "fc2",
            "fc3",
        ]
    layout = model_layout(build_model("vgg11", (3, 32, 32), 10))
    assert layout.head_numel == 530_442
    assert round(layout.head_share * 100, 2) == 5.44
    assert build_model("vgg11", (3, 32, 32), 10)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_communication_ratios():
    """FedPVR/FedAvg = 1 + head share: under 1.15 on the default model, about 1.05 on VGG-11."""
    for name, shape, lo, hi in (
        ("small_cnn", (1, 8, 8), 1.0, 1.15),
        ("vgg11", (3, 32, 32), 1.05, 1.06),
    ):
        layout = model_layout(build_model(name, shape, 10))

        def traffic(algorithm: str, layout=layout) -> int:
            algo = build_algorithm(TrainConfig(algorithm=algorithm), layout, 10)
            return sum(algo.bytes_per_client())

        fedavg, pvr, scaffold = traffic("fedavg"), traffic("fedpvr"), traffic("scaffold")
        assert lo < pvr / fedavg < hi
        assert scaffold / fedavg == 2.0
        assert fedavg == 2 * 4 * layout.numel


@pytest.mark.parametrize(
    "name,shape",
    [
        ("small_cnn", (1, 8, 8)),
        ("small_cnn", (1, 28, 28)),
        ("mlp", (1, 28, 28)),
        ("small_cnn", (3, 32, 32)),
    ],
)
def test_models_fit_their_inputs(name, shape):
    model = build_model(name, shape, 7)
    assert model(torch.zeros(3, *shape)).shape == (3, 7)
    layout = model_layout(model)
    assert {ly.group for ly in layout.layers} == {"head", "body"}


def test_head_overrides():
    model = build_model("small_cnn", (1, 8, 8), 10)
    own = model_layout(model)
    assert [ly.label for ly in own.layers if ly.group == "head"] == ["fc1", "fc2", "fc3"]
    last = model_layout(model, head=("classifier.4.*",))
    assert [ly.label for ly in last.layers if ly.group == "head"] == ["fc3"]
    k = model_layout(model, head_last_k=2)
    assert [ly.label for ly in k.layers if ly.group == "head"] == ["fc2", "fc3"]
    none = model_layout(model, head_last_k=0)
    assert none.head_numel == 0
    mask = own.head_mask()
    assert int(mask.sum()) == own.head_numel and bool(mask[-1]) and not bool(mask[0])


def test_head_pattern_matching_nothing_is_an_error():
    model = build_model("small_cnn", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"'fc\.\*' matches no parameter"):
        model_layout(model, head=("fc.*",))


def test_vgg11_rejects_small_inputs():
    with pytest.raises(ConfigError, match="32x32"):
        build_model("vgg11", (1, 8, 8), 10)


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build_model("resnet", (1, 8, 8), 10)


def test_registry_specs_are_torch_free_and_count_parameters():
    # other test modules register their own models into the same registry: the built-ins come first
    assert MODELS.names()[:4] == ("small_cnn", "vgg11", "mlp", "cnn1d")
    spec = MODELS.get("vgg11")
    assert spec.num_params((3, 32, 32), 10) == 9_750_922  # counted on the meta device
    assert spec.num_params((3, 32, 32), 100) == 9_797_092
    small = build_model("small_cnn", (1, 8, 8), 10)
    assert MODELS.get("small_cnn").num_params((1, 8, 8), 10) == sum(
        p.numel() for p in small.parameters()
    )
    with pytest.raises(ConfigError, match="did you mean 'vgg11'"):
        MODELS.get("vgg16")


def test_vgg11_initialisation_is_the_reference_codes():
    """Conv weights ~ N(0, 2 / (3 * 3 * C_out)); conv biases and linear layers: torch defaults."""
    torch.manual_seed(0)
    model = build_model("vgg11", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 8 and len(linears) == 3
    for conv in convs:
        w = conv.weight.detach().double()
        expected = (2.0 / (9 * conv.out_channels)) ** 0.5
        # the sample std of n normal draws has relative error about 1 / sqrt(2n) (n >= 1728 here)
        assert abs(float(w.std()) / expected - 1) < 5 / (2 * w.numel()) ** 0.5
        assert abs(float(w.mean())) < 5 * expected / w.numel() ** 0.5
        # bias: PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zero
        bound = 1 / (conv.in_channels * 9) ** 0.5
        b = conv.bias.detach()
        assert float(b.abs().max()) <= bound and float(b.abs().max()) > 0.5 * bound
    for lin in linears:
        bound = (
            1 / lin.in_features**0.5
        )  # torch default: kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(fan_in))
        top = float(lin.weight.detach().abs().max())
        assert 0.9 * bound < top <= bound
