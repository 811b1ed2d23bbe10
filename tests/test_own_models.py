"""Researchers' own networks: BatchNorm buffers as federated state, frozen parameters, head
declaration, probe CKA on any module, layer labels from module names.

The models are written here and registered in ``MODELS`` under test-only names; they run on the
8x8 digits (1 channel, 10 classes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import small_config
from torch import nn

from driftscope import open_run, train
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.engine.resume_state import BUFFER_STATE, GLOBAL_PARAMS
from driftscope.errors import ConfigError
from driftscope.models.registry import MODELS, ModelSpec, model_layout, register_model

pytestmark = pytest.mark.kernels


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class BNResNet(nn.Module):
    """A ResNet in miniature: stem conv + BatchNorm, one residual block, linear head."""

    head_prefixes = ("fc",)

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8))
        self.fc = nn.Linear(8, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


class TinyTransformer(nn.Module):
    """Rows of the image as 8 tokens; a root-owned positional embedding; one encoder block with
    nn.MultiheadAttention (its tuple output). No declared head."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.pos = nn.Parameter(torch.randn(1, 8, 16) * 0.1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm1 = nn.LayerNorm(16)
        self.ff = nn.Linear(16, 16)
        self.norm2 = nn.LayerNorm(16)
        self.out = nn.Linear(16, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1, 2)) + self.pos  # (N, 8, 16)
        a, _ = self.attn(h, h, h)
        h = self.norm1(h + a)
        h = self.norm2(h + torch.relu(self.ff(h)))
        return self.out(h.mean(1))


class TinyLSTM(nn.Module):
    """Rows as a sequence, sequence-first nn.LSTM (its output: (out (L, N, H), (h, c)))."""

    head_prefixes = ("fc",)

    def __init__(self, k: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16)
        self.fc = nn.Linear(16, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.flatten(1, 2).transpose(0, 1))
        return self.fc(out[-1])


class LoRAMLP(nn.Module):
    """A frozen base layer (its weight frozen, its bias trained) with a trainable low-rank
    adapter, and a trainable head."""

    head_prefixes = ("fc",)

    def __init__(self, k: int) -> None:
        super().__init__()
        self.base = nn.Linear(64, 32)
        self.base.weight.requires_grad_(False)
        self.lora_a = nn.Linear(64, 4, bias=False)
        self.lora_b = nn.Linear(4, 32, bias=False)
        self.frozen_norm = nn.LayerNorm(32).requires_grad_(False)
        self.fc = nn.Linear(32, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        h = self.frozen_norm(torch.relu(self.base(x) + self.lora_b(self.lora_a(x))))
        return self.fc(h)


MODELS_HERE = {
    "test_bn_resnet": BNResNet,
    "test_transformer": TinyTransformer,
    "test_lstm": TinyLSTM,
    "test_lora": LoRAMLP,
}
for _name, _cls in MODELS_HERE.items():
    if _name not in MODELS:
        register_model(ModelSpec(_name, "test model", lambda shape, k, c=_cls: c(k)))

RUN = dict(
    train__rounds=2,
    train__clients=4,
    train__local_steps=3,
    record__probe_size=16,
    record__cka_every=1,
)
SKIPPED = {  # what probe CKA cannot measure in each model
    "test_bn_resnet": set(),
    "test_transformer": {"pos", "attn.out_proj"},  # root parameter; out_proj's forward never runs
    "test_lstm": set(),
    "test_lora": set(),
}


@pytest.mark.parametrize("name", sorted(MODELS_HERE))
def test_own_model_trains_two_rounds_with_probe_cka(tmp_path, digits, name):
    path = tmp_path / "r.h5"
    extra = {"model__head_last_k": 1} if name == "test_transformer" else {}
    with pytest.warns() if SKIPPED[name] else _no_warning():
        train(small_config(model__name=name, **RUN, **extra), path, dataset=digits)
    with open_run(path) as run:
        assert run.status == "complete" and run.num_rounds == 2
        assert set(run.cka_skipped) == SKIPPED[name]
        for layer in run.layers:
            assert layer.name and layer.label  # a real name, also for a root-owned parameter
            if layer.name in SKIPPED[name]:
                with pytest.raises(Exception, match="no probe CKA"):
                    run.cka(layer.name)
                continue
            cka = run.cka(layer.name)
            assert cka.shape == (2, 5, 5) and np.isfinite(cka).all(), layer.name
            # a model's CKA with itself is 1 (up to the float32 probe Grams)
            assert np.allclose(np.diagonal(cka, axis1=1, axis2=2), 1.0, atol=1e-4), layer.name


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# ---------------------------------------------------------------------------------- buffers
class Keep(Hook):
    """Copies of every client's buffers and the new global buffers, per round."""

    def __init__(self) -> None:
        self.clients: dict[int, list[tuple[int, dict]]] = {}
        self.global_buffers: dict[int, dict] = {}

    def on_client_end(self, event):
        copy = {k: v.clone() for k, v in event.buffers.items()}
        self.clients.setdefault(event.round, []).append((event.client, copy))

    def on_round_end(self, event):
        self.global_buffers[event.round] = {k: v.clone() for k, v in event.global_buffers.items()}


BN = dict(RUN, model__name="test_bn_resnet", train__weighting="samples", train__rounds=3)


def test_global_buffers_are_the_weighted_average_of_the_clients(tmp_path, digits):
    keep = Keep()
    cfg = small_config(**BN)
    train(cfg, tmp_path / "r.h5", dataset=digits, hooks=[keep])
    sim = Simulator(cfg, digits)  # the same seeded partition: the clients' sizes
    sizes = {c: len(p) for c, p in enumerate(sim.parts)}
    assert sim.buffer_names == [
        f"{m}.{b}"
        for m in ("bn1", "layer1.0.bn1", "layer1.0.bn2")
        for b in ("running_mean", "running_var", "num_batches_tracked")
    ]
    start = {k: v.clone() for k, v in sim.global_buffers.items()}
    for r in range(3):
        clients = keep.clients[r]
        total = sum(sizes[c] for c, _ in clients)
        for name, got in keep.global_buffers[r].items():
            # the slow, obvious average: sum_i n_i / n * b_i in float64
            want = sum(sizes[c] / total * b[name].double() for c, b in clients)
            if name.endswith("num_batches_tracked"):
                assert got.dtype == torch.int64 and int(got) == round(float(want))
            else:
                # float64 sum rounded once to float32: within one float32 rounding of the value
                assert got.dtype == torch.float32
                assert torch.allclose(got.double(), want, rtol=2e-7, atol=1e-12), name
        # every client started from the global buffers: 3 local steps each on top of them
        prev = start if r == 0 else keep.global_buffers[r - 1]
        for _, b in clients:
            assert int(b["bn1.num_batches_tracked"]) == int(prev["bn1.num_batches_tracked"]) + 3
    assert not torch.equal(keep.global_buffers[2]["bn1.running_var"], start["bn1.running_var"])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model.eval()(x)
    loss = float(torch.nn.functional.cross_entropy(logits.double(), y, reduction="mean"))
    return loss, float((logits.argmax(1) == y).double().mean())


def test_stored_accuracy_is_that_of_the_stored_global_parameters_and_buffers(tmp_path, digits):
    path = tmp_path / "r.h5"
    cfg = small_config(**BN)
    train(cfg, path, dataset=digits)
    with open_run(path) as run:
        acc = float(run.metrics["test_accuracy"].iloc[-1])
        loss = float(run.metrics["test_loss"].iloc[-1])
        round_, state = run.resume_state()
        layout = run.layout
    assert round_ == 2
    sim = Simulator(cfg, digits)  # its test set, normalised as in the run
    model = sim.build_model()
    flat = torch.from_numpy(state[GLOBAL_PARAMS])
    with torch.no_grad():
        for p in layout.params:
            model.get_parameter(p.name).copy_(flat[p.offset : p.offset + p.numel].view(p.shape))
        for name in sim.buffer_names:
            model.get_buffer(name).copy_(torch.from_numpy(np.asarray(state[BUFFER_STATE + name])))
    got_loss, got_acc = _accuracy(model, sim.test_x, sim.test_y)
    # one forward pass of the same float32 model: the accuracy to one test image, the loss to
    # float32 rounding of the logits (the run sums per-batch losses in float64)
    assert abs(got_acc - acc) <= 1 / len(sim.test_y)
    assert math.isclose(got_loss, loss, rel_tol=1e-5)
    # and the buffers matter: with the initial (mean 0, var 1) statistics the model differs
    fresh = sim.build_model()
    kept = {k: v for k, v in model.state_dict().items() if "running" not in k}
    fresh.load_state_dict(kept, strict=False)
    assert _accuracy(fresh, sim.test_x, sim.test_y)[0] != pytest.approx(got_loss, rel=1e-3)


@pytest.mark.parametrize("buffers", ["average", "local"])
def test_a_resumed_batchnorm_run_equals_the_uninterrupted_one(tmp_path, digits, buffers):
    from test_resume import StopAt, assert_same_run

    from driftscope.engine.training import resume

    cfg = small_config(**dict(BN, model__buffers=buffers))
    whole = tmp_path / "whole.h5"
    train(cfg, whole, dataset=digits)
    path = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, dataset=digits, hooks=[StopAt(2)])
    resume(path, dataset=digits)
    assert_same_run(path, whole)  # every stored number, test metrics and CKA included


def test_local_buffers_keep_each_clients_own(tmp_path, digits):
    keep = Keep()
    cfg = small_config(**dict(BN, model__buffers="local"))
    train(cfg, tmp_path / "r.h5", dataset=digits, hooks=[keep])
    # round 1: each client continues from its own round-0 statistics (3 more steps), not the average
    own = {c: b for c, b in keep.clients[0]}
    for c, b in keep.clients[1]:
        steps = int(b["bn1.num_batches_tracked"])
        assert steps == int(own[c]["bn1.num_batches_tracked"]) + 3 if c in own else steps == 3
    with open_run(tmp_path / "r.h5") as run:
        assert run.config.model.buffers == "local"


# -------------------------------------------------------------------------- frozen parameters
@pytest.mark.parametrize("batched", ["off", "on"])
def test_frozen_parameters_stay_bit_for_bit_and_out_of_the_layout(tmp_path, digits, batched):
    cfg = small_config(**dict(RUN, model__name="test_lora", train__batched=batched))
    sim = Simulator(cfg, digits)
    frozen = {n: p.detach().clone() for n, p in sim.model.named_parameters() if not p.requires_grad}
    assert set(frozen) == {"base.weight", "frozen_norm.weight", "frozen_norm.bias"}
    names = [p.name for p in sim.layout.params]
    assert names == ["base.bias", "lora_a.weight", "lora_b.weight", "fc.weight", "fc.bias"]
    start = sim.global_params.clone()
    sim.run()
    for n, p in sim.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert not torch.equal(sim.global_params, start)  # the trainable ones did train
    path = tmp_path / "r.h5"
    train(cfg, path, dataset=digits)
    with open_run(path) as run:
        assert [p.name for p in run.params] == names
        assert run.numel == sim.layout.numel == 32 + 64 * 4 + 4 * 32 + 32 * 10 + 10
        # FedAvg sends the trainable parameters only, float32, both ways
        per_round = 4 * run.numel * cfg.train.clients_per_round
        assert (run.metrics["downlink_bytes"] == per_round).all()
        assert (run.metrics["uplink_bytes"] == per_round).all()


@pytest.mark.parametrize(
    "name, buffers",
    [("test_lora", "average"), ("test_bn_resnet", "average"), ("test_bn_resnet", "local")],
)
def test_batched_and_sequential_agree_on_frozen_parameters_and_buffers(digits, name, buffers):
    out = {}
    for batched in ("off", "on"):
        cfg = dict(RUN, model__name=name, train__batched=batched, model__buffers=buffers)
        cfg["train__rounds"] = 3
        sim = Simulator(small_config(**cfg), digits)
        sim.run()
        out[batched] = sim
    on, off = out["on"], out["off"]
    # vmapped matmuls and convolutions add in another order: float32 rounding over 3 rounds of 3
    # steps (measured differences ~1e-7; 1e-4 relative leaves room for other CPUs' kernels)
    assert torch.allclose(on.global_params, off.global_params, rtol=1e-4, atol=1e-5)
    assert on.buffer_names == off.buffer_names
    for key, value in off.global_buffers.items():
        assert torch.allclose(on.global_buffers[key], value, rtol=1e-4, atol=1e-5), key
    for key, value in off.client_buffers.items():
        assert torch.allclose(on.client_buffers[key], value, rtol=1e-4, atol=1e-5), key
    assert torch.equal(on.client_buffers_set, off.client_buffers_set)
    for n, p in on.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, off.frozen[n]), n


# ------------------------------------------------------------------------ head and labels
def test_fedpvr_on_a_model_without_a_head_is_a_one_line_error(digits):
    cfg = small_config(**dict(RUN, model__name="test_transformer", train__algorithm="fedpvr"))
    with pytest.raises(ConfigError, match="--head-last-k") as err:
        Simulator(cfg, digits)
    assert "\n" not in str(err.value)
    # declared: the last layer, or an explicitly empty head
    Simulator(cfg.replace({"model.head_last_k": 1}), digits)
    Simulator(cfg.replace({"model.head_last_k": 0}), digits)


def test_layer_labels_come_from_module_names_unless_short_ones_cannot_collide():
    layout = model_layout(BNResNet(10))
    assert [ly.label for ly in layout.layers] == [ly.name for ly in layout.layers]
    assert layout.layer("layer1.0.bn1").kind == "BatchNorm2d"

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.head = nn.Linear(2, 2)

    assert [ly.label for ly in model_layout(Plain()).layers] == ["conv1", "fc1"]

    class Clash(nn.Module):  # short labels would be fc1, fc2: "fc1" names the second layer
        def __init__(self) -> None:
            super().__init__()
            self.fc0 = nn.Linear(2, 2)
            self.fc1 = nn.Linear(2, 2)

    assert [ly.label for ly in model_layout(Clash()).layers] == ["fc0", "fc1"]
    assert model_layout(Clash()).layer("fc1").name == "fc1"


def test_a_root_owned_parameter_is_a_named_layer():
    layout = model_layout(TinyTransformer(10))
    pos = layout.layer("pos")
    assert (pos.kind, pos.params, pos.numel) == ("Parameter", ("pos",), 8 * 16)
    assert layout.param("pos").layer == ""


# ------------------------------------------------------------------------------------- flower
@pytest.mark.parametrize("name", ["test_bn_resnet", "test_lora"])
def test_flower_messages_carry_buffers_and_leave_frozen_parameters_alone(name, digits, tmp_path):
    """The Flower strategy and ClientApp over real Messages (in-process grid): the same run file
    as in-process, bit for bit (buffers cross the wire in their own dtypes; frozen parameters are
    not sent and stay as built)."""
    pytest.importorskip("flwr")
    from flowergrid import LocalGrid
    from test_flower import _run_files_equal

    from driftscope.flower.client import app as client_app
    from driftscope.flower.strategy import DriftscopeStrategy

    cfg = small_config(**dict(RUN, model__name=name, train__clients=3))
    sim = Simulator(cfg, digits)
    sim.run()
    train(cfg, tmp_path / "inprocess.h5", dataset=digits)
    strategy = DriftscopeStrategy(cfg, tmp_path / "flower.h5", dataset=digits)
    strategy.start(LocalGrid(client_app, 3, seed=7))
    assert torch.equal(strategy.x, sim.global_params)
    for key, value in sim.global_buffers.items():
        assert torch.equal(strategy.global_buffers[key], value), key
    for n, p in strategy.setup.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, sim.frozen[n]), n
    _run_files_equal(tmp_path / "inprocess.h5", tmp_path / "flower.h5")
    with open_run(tmp_path / "flower.h5") as a, open_run(tmp_path / "inprocess.h5") as b:
        assert (a.metrics["downlink_bytes"] == b.metrics["downlink_bytes"]).all()


def test_the_flower_wrapper_probes_with_the_apps_buffers(tmp_path):
    """Anyone's Flower app sending state_dicts: the events carry the BatchNorm statistics of each
    client's reply and of the new global arrays, so probe CKA runs the models the app holds."""
    pytest.importorskip("flwr")
    from flowergrid import LocalGrid
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp.strategy import FedAvg

    from driftscope.flower import recording

    def bn_model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    app = ClientApp()
    returned: dict = {}

    @app.train()
    def fit(msg, context):
        model = bn_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        pid = int(context.node_config["partition-id"])
        gen = torch.Generator().manual_seed(pid)
        x, y = torch.randn(32, 4, generator=gen) + pid, torch.randint(0, 3, (32,), generator=gen)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        returned[pid] = {k: v.clone() for k, v in model.state_dict().items()}
        metrics = MetricRecord({"num-examples": 32})
        arrays = ArrayRecord(model.state_dict())
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    class Seen(Hook):
        def on_client_end(self, event):
            self.client = {k: v.clone() for k, v in event.buffers.items()}

        def on_round_end(self, event):
            self.global_buffers = {k: v.clone() for k, v in event.global_buffers.items()}

    seen = Seen()
    wrapped = recording(
        FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0),
        tmp_path / "w.h5",
        model_factory=bn_model,
        probe_inputs=torch.randn(16, 4, generator=torch.Generator().manual_seed(1)),
        hooks=[seen],
    )
    result = wrapped.start(
        grid=LocalGrid(app, 3), initial_arrays=ArrayRecord(bn_model().state_dict()), num_rounds=1
    )
    names = ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert sorted(seen.global_buffers) == sorted(names)
    for name in names:
        want = torch.from_numpy(np.array(result.arrays[name].numpy())).reshape(
            seen.global_buffers[name].shape
        )
        assert torch.equal(seen.global_buffers[name], want.to(seen.global_buffers[name].dtype))
    assert any(
        torch.equal(seen.client["1.running_var"], r["1.running_var"]) for r in returned.values()
    )
    with open_run(tmp_path / "w.h5") as run:
        assert run.status == "complete"
        assert np.isfinite(run.cka("1")).all()


def test_a_run_file_from_before_buffers_were_state(tmp_path, digits):
    """A stored config without model.buffers reads as the default; resuming it continues a model
    without buffers, and refuses (one line) a model whose buffers the file never stored."""
    import h5py
    from test_resume import StopAt

    from driftscope.engine.training import resume
    from driftscope.errors import RunFileError
    from driftscope.runfile import schema

    for name, works in (("test_lora", True), ("test_bn_resnet", False)):
        path = tmp_path / f"{name}.h5"
        with pytest.raises(KeyboardInterrupt):
            train(
                small_config(**dict(RUN, model__name=name)), path, dataset=digits, hooks=[StopAt(1)]
            )
        with h5py.File(path, "r+") as f:  # as written before: no model.buffers, no buffer state
            del f.attrs[schema.STATIC_CRC]  # (nor the checksums of the static parts)
            config = json.loads(f.attrs[schema.ATTR_CONFIG])
            del config["model"]["buffers"]
            f.attrs[schema.ATTR_CONFIG] = json.dumps(config)
            if "buffers" in f["state"]:
                del f["state/buffers"]
        if works:
            resume(path, dataset=digits)
            with open_run(path) as run:
                assert run.status == "complete" and run.config.model.buffers == "average"
        else:
            with pytest.raises(RunFileError, match="no buffers") as err:
                resume(path, dataset=digits)
            assert "\n" not in str(err.value)
