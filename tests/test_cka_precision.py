"""The float32 probe-Gram path (``record.cka_precision = "float32"``) against the exact float64 one.

Every check compares the fast value with the float64 value of the same activations and asserts
the error is within the bound derived in ``gram32_error`` (Higham's dot-product bound) and carried
to CKA by ``cka_error_bound``: on random features, on features whose mean is far larger than their
spread (the classic float32 cancellation case), and on real activations of the digits model and of
VGG-11 on CIFAR-shaped inputs. The propagation step is also checked on its own with perturbations
large enough to come near the bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from driftscope.config import RunConfig
from driftscope.engine.activations import capture_activations
from driftscope.errors import ConfigError
from driftscope.metrics import gram as gram_module
from driftscope.metrics.cka import (
    cka_error_bound,
    pairwise_cka,
    rbf_from_linear_gram,
    unbiased_centre_norm,
)
from driftscope.metrics.gram import centred_gram, float64_device, gram32_error
from driftscope.models.registry import build_model, model_layout

# float results compared at a rounding tolerance: make test runs these again under other CPU kernels
pytestmark = pytest.mark.kernels

KINDS = ("linear", "rbf", "debiased")


def all_kinds(grams: np.ndarray) -> dict[str, np.ndarray]:
    """The recorder's three CKA kinds of a (M, n, n) stack of centred linear Grams."""
    return {
        "linear": pairwise_cka(grams, centred=True),
        "rbf": pairwise_cka(rbf_from_linear_gram(grams)),
        "debiased": pairwise_cka(grams, debiased=True),
    }


def check_within_bound(acts: list) -> dict[str, float]:
    """Float32 path vs float64 path on activations of M models: the Grams and all three CKA kinds
    within their bounds. Returns the measured CKA errors."""
    g64 = np.stack([np.asarray(centred_gram(a, "float64")) for a in acts])
    g32 = np.stack([np.asarray(centred_gram(a, "float32")) for a in acts])
    eps, eta = np.array([gram32_error(a) for a in acts]).T
    for k64, k32, e, h in zip(g64, g32, eps, eta, strict=True):
        assert np.linalg.norm(k32 - k64) <= e
        assert np.abs(k32 - k64).max() <= 4 * h
    exact, fast = all_kinds(g64), all_kinds(g32)
    errors = {}
    for kind in KINDS:
        bound = cka_error_bound(g32, eps, eta, kind)
        err = np.abs(fast[kind] - exact[kind])
        assert np.all(np.isfinite(exact[kind]))
        assert np.all(err <= bound), (kind, err.max(), bound.min())
        errors[kind] = float(err.max())
    return errors


def features(seed: int, models: int = 4, n: int = 40, p: int = 3000, offset: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, p, generator=g)
    return [torch.relu(base + 0.7 * torch.randn(n, p, generator=g)) + offset for _ in range(models)]


# ------------------------------------------------------------------------------ the Grams
def test_float32_gram_is_centred_and_close_on_random_features() -> None:
    x = features(0, models=1)[0]
    k64 = centred_gram(x).numpy()
    k32 = centred_gram(x, "float32").numpy()
    np.testing.assert_allclose(k32.sum(axis=0), 0.0, atol=1e-9 * np.abs(k64).max())
    np.testing.assert_allclose(k32, k32.T, rtol=0, atol=0)
    assert np.linalg.norm(k32 - k64) <= gram32_error(x)[0]
    # numpy and torch inputs give the same bounded result
    np.testing.assert_allclose(centred_gram(x.numpy(), "float32"), k32, rtol=1e-6, atol=1e-3)


def test_float64_precision_is_the_exact_path_unchanged() -> None:
    x = features(1, models=1)[0]
    xd = x.double()
    want = (xd - xd.mean(0, keepdim=True)) @ (xd - xd.mean(0, keepdim=True)).T
    assert torch.equal(centred_gram(x), want)
    assert torch.equal(centred_gram(x, "float64"), want)


def test_half_precision_inputs_widen_exactly() -> None:
    x = features(2, models=1)[0].to(torch.bfloat16)
    assert torch.equal(centred_gram(x, "float32"), centred_gram(x.float(), "float32"))


def test_config_and_gram_name_the_same_precisions() -> None:
    from driftscope.config import CKA_PRECISIONS

    assert set(CKA_PRECISIONS) == set(gram_module.PRECISIONS)
    assert RunConfig().record.cka_precision == "float32"


def test_unknown_precision_is_an_error() -> None:
    with pytest.raises(ValueError, match="choose one of float32, float64"):
        centred_gram(np.ones((4, 3)), "float16")
    with pytest.raises(ConfigError, match="cka_precision"):
        RunConfig().replace({"record.cka_precision": "half"})


# --------------------------------------------------------------------- CKA within the bound
def test_random_features_within_bound() -> None:
    errors = check_within_bound(features(3))
    assert max(errors.values()) < 1e-5  # measured: about 1e-9 (the bound is a worst case)


@pytest.mark.parametrize("offset", [1e2, 1e4])
def test_large_mean_features_within_bound_where_the_naive_order_fails(offset: float) -> None:
    """Features with mean >> spread: centring first keeps the error at the spread's scale. The
    naive order (float32 Gram of raw features, centred afterwards in float64) is far outside the
    same bound, so the test would catch a path that centred too late."""
    acts = features(4, offset=offset)
    errors = check_within_bound(acts)
    assert max(errors.values()) < 1e-5
    x = acts[0]
    k = (x @ x.T).double()
    n = k.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    naive = (h @ k @ h).numpy()
    exact = centred_gram(x).numpy()
    assert np.linalg.norm(naive - exact) > 10 * gram32_error(x)[0]


def test_float64_features_are_centred_before_rounding() -> None:
    acts = [a.double() * 1e-3 + 1e5 for a in features(5)]  # mean / spread about 1e8
    errors = check_within_bound(acts)
    assert max(errors.values()) < 1e-5


def model_activations(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    layers = [layer.name for layer in model_layout(model).layers]
    with torch.no_grad(), capture_activations(model.eval(), layers) as acts:
        model(x)
        return dict(acts)


def perturbed_models(name: str, shape: tuple, models: int, scale: float) -> list:
    """A model and copies with relative parameter noise ``scale``: CKA values spread below 1."""
    torch.manual_seed(0)
    base = build_model(name, shape, 10)
    out = [base]
    g = torch.Generator().manual_seed(1)
    for i in range(1, models):
        m = build_model(name, shape, 10)
        with torch.no_grad():
            for p, q in zip(m.parameters(), base.parameters(), strict=True):
                p.copy_(q + scale * i * q.std() * torch.randn(q.shape, generator=g))
        out.append(m)
    return out


def test_digits_model_activations_within_bound(digits) -> None:
    models = perturbed_models("small_cnn", digits.input_shape, 3, 0.3)
    mean = torch.tensor(digits.mean).view(1, -1, 1, 1)
    std = torch.tensor(digits.std).view(1, -1, 1, 1)
    probe = (digits.test_x[:64] - mean) / std
    acts = [model_activations(m, probe) for m in models]
    for layer in acts[0]:
        check_within_bound([a[layer] for a in acts])


def test_vgg11_activations_within_bound() -> None:
    """VGG-11 on CIFAR-shaped inputs: conv activations up to 64 x 32 x 32 = 65,536 wide."""
    models = perturbed_models("vgg11", (3, 32, 32), 3, 0.2)
    probe = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    acts = [model_activations(m, probe) for m in models]
    assert acts[0]["features.0"].shape[1] == 65536
    for layer in ("features.0", "features.6", "features.18", "classifier.4"):
        check_within_bound([a[layer] for a in acts])


# --------------------------------------------------------------- the propagation on its own
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1e-6, 1e-3, 3e-2])
def test_cka_error_bound_holds_for_large_gram_perturbations(kind: str, size: float) -> None:
    """The CKA step of the bound alone: perturb exact centred Grams by symmetric E with
    ``||E||_F = eps`` and ``max |E| = eta`` (far larger than float32 rounding, so the bound is
    exercised near where it is tight); the CKA change stays within ``cka_error_bound``."""
    acts = features(6, models=3, n=24, p=50)
    g = np.stack([centred_gram(a).numpy() for a in acts])
    rng = np.random.default_rng(int(size * 1e6))
    worst = 0.0
    for _ in range(20):
        e = rng.standard_normal(g.shape)
        e = e + np.swapaxes(e, 1, 2)
        e *= (
            size
            * np.abs(g).max(axis=(1, 2), keepdims=True)
            / np.abs(e).max(axis=(1, 2), keepdims=True)
        )
        eta = np.abs(e).max(axis=(1, 2))  # distances move by at most 4 max |E|
        eps = np.linalg.norm(e.reshape(3, -1), axis=1)
        moved = g + e
        bound = cka_error_bound(moved, eps, eta, kind)
        err = np.abs(all_kinds(moved)[kind] - all_kinds(g)[kind])
        assert np.all(err <= bound)
        if size <= 1e-3:  # small enough for a finite bound on every kind
            assert np.all(np.isfinite(bound))
            worst = max(worst, float((err / bound).max()))
    assert worst > 0 or size > 1e-3


def test_unbiased_centring_norm_bound() -> None:
    """``||U(E)||_F <= c_U(n) ||E||_F`` for random and structured symmetric E."""
    from driftscope.metrics.cka import _unbiased_centre

    rng = np.random.default_rng(0)
    for n in (4, 5, 17, 128):
        c = unbiased_centre_norm(n)
        v = rng.standard_normal(n)
        cases = [
            rng.standard_normal((n, n)),
            np.outer(v, np.ones(n)),
            np.ones((n, n)) - np.eye(n),
            np.diag(v),
        ]
        for e in cases:
            e = e + e.T
            assert np.linalg.norm(_unbiased_centre(e)) <= c * np.linalg.norm(e) * (1 + 1e-12)


# ------------------------------------------------------------------------ devices
def test_float64_device_keeps_float64_off_mps() -> None:
    assert float64_device(torch.device("mps")) == torch.device("cpu")
    assert float64_device(torch.device("cpu")) == torch.device("cpu")
    assert float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


class Float64Spy(TorchFunctionMode):
    """Records every float64 tensor a torch function returns on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (
            isinstance(out, torch.Tensor)
            and out.dtype == torch.float64
            and out.device.type == "cpu"
        ):
            self.seen.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_no_float64_on_a_device_without_it(monkeypatch, precision: str) -> None:
    """No MPS here: the CPU plays the device without float64 and the meta device plays the host
    (float64_device monkeypatched). Neither path makes a float64 tensor on the 'device'; the Gram
    ends on the 'host'."""
    monkeypatch.setattr(gram_module, "float64_device", lambda device: torch.device("meta"))
    x = features(7, models=1, n=8, p=600)[0]
    spy = Float64Spy()
    with spy:
        out = centred_gram(x, precision)
    assert spy.seen == []
    assert out.device.type == "meta" and out.dtype == torch.float64


def test_float32_products_stay_ieee_under_a_lower_matmul_precision() -> None:
    x = features(8, models=1)[0]
    want = centred_gram(x, "float32")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = centred_gram(x, "float32")
        assert torch.get_float32_matmul_precision() == "medium"  # restored after the product
    finally:
        torch.set_float32_matmul_precision(previous)
    assert torch.equal(got, want)


def test_run_file_names_the_precision(tmp_path, digits) -> None:
    import h5py
    from conftest import small_config

    from driftscope import train
    from driftscope.runfile import schema

    for precision in ("float32", "float64"):
        cfg = small_config(train__rounds=1, record__cka_precision=precision)
        path = train(cfg, tmp_path / f"{precision}.h5", dataset=digits)
        with h5py.File(path, "r") as f:
            assert f[schema.RECORDS].attrs[schema.CKA_PRECISION_ATTR] == precision
