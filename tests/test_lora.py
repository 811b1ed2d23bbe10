"""LoRA adapters across clients: the pairing of PEFT's factors, FedEx-LoRA's aggregation residual
against a slow recomputation, and a federated fine-tuning run (frozen base untouched, only
adapters and classifier in the layout and the traffic, the recorded measures recomputed from the
stored client adapters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftscope import open_run, train
from driftscope.analysis import drift_table
from driftscope.metrics import METRICS
from driftscope.metrics.drift import relative_variance
from driftscope.metrics.gram import update_gram
from driftscope.metrics.lora import aggregation_residual, lora_pairs
from driftscope.models.lora_names import factor_label, is_lora_factor

pytestmark = pytest.mark.kernels  # float results of two code paths (the recorder's, the test's)

# both sides are float64 sums and products of the same float64 numbers, grouped differently: a few
# unit roundoffs (2.2e-16) of the largest term, far below 1e-10
EXACT = 1e-10


def _residual_slow(dA, dB, A, B, p):
    """||sum p_i B_i A_i - (sum p_i B_i)(sum p_i A_i)|| / ||sum p_i B_i A_i|| with the client
    adapters A_i = A + dA_i, B_i = B + dB_i built one by one."""
    p = np.asarray(p, dtype=np.float64) / np.sum(p)
    clients = [(B + db, A + da) for da, db in zip(dA, dB)]
    product = sum(pi * (b @ a) for pi, (b, a) in zip(p, clients))
    mean_b = sum(pi * b for pi, (b, _) in zip(p, clients))
    mean_a = sum(pi * a for pi, (_, a) in zip(p, clients))
    return np.linalg.norm(product - mean_b @ mean_a) / np.linalg.norm(product)


def _adapters(rng, s=5, r=3, k=7, m=6):
    return (
        rng.normal(size=(s, r, k)),
        rng.normal(size=(s, m, r)),
        rng.normal(size=(r, k)),
        rng.normal(size=(m, r)),
    )


def test_the_residual_is_fedex_lora_from_client_adapters():
    rng = np.random.default_rng(0)
    for weights in (None, rng.uniform(0.1, 1.0, size=5)):
        dA, dB, A, B = _adapters(rng)
        p = np.ones(5) if weights is None else weights
        assert aggregation_residual(dA, dB, A, B, weights) == pytest.approx(
            _residual_slow(dA, dB, A, B, p), rel=EXACT
        )
    # leading round axes: one value per round
    rounds = [_adapters(rng) for _ in range(3)]
    stacked = [np.stack(parts) for parts in zip(*rounds)]
    out = aggregation_residual(*stacked)
    assert out.shape == (3,)
    for value, parts in zip(out, rounds):
        assert value == pytest.approx(_residual_slow(*parts, np.ones(5)), rel=EXACT)


def test_the_residual_is_zero_for_equal_adapters_and_positive_otherwise():
    rng = np.random.default_rng(1)
    dA, dB, A, B = _adapters(rng)
    same_a = np.broadcast_to(dA[0], dA.shape)
    same_b = np.broadcast_to(dB[0], dB.shape)
    assert aggregation_residual(same_a, same_b, A, B) < 1e-14
    # clients that differ only in A (or only in B) average exactly: B A is linear in each factor
    assert aggregation_residual(dA, same_b, A, B) < 1e-14
    assert aggregation_residual(same_a, dB, A, B) < 1e-14
    assert aggregation_residual(dA, dB, A, B) > 1e-3
    # its numerator is the weighted covariance of the B and A updates: no global adapter in it
    p = np.full(5, 0.2)
    cov = sum(pi * (db - dB.mean(0)) @ (da - dA.mean(0)) for pi, da, db in zip(p, dA, dB))
    product = sum(pi * (B + db) @ (A + da) for pi, da, db in zip(p, dA, dB))
    assert aggregation_residual(dA, dB, A, B) == pytest.approx(
        np.linalg.norm(cov) / np.linalg.norm(product), rel=EXACT
    )


def test_lora_pairs_match_peft_names():
    names = [
        "blocks.0.attn.q.lora_A.default.weight",
        "blocks.0.attn.q.lora_B.default.weight",
        "blocks.0.fc1.lora_A.default.weight",  # its B is missing: left out
        "blocks.0.fc1.base_layer.weight",
        "head.weight",
    ]
    pairs = lora_pairs(names)
    assert [(p.module, p.adapter, p.a, p.b) for p in pairs] == [
        ("blocks.0.attn.q", "default", names[0], names[1])
    ]
    assert is_lora_factor(names[2]) and not is_lora_factor(names[3])
    assert factor_label("blocks.0.attn.q.lora_B.default") == "blocks.0.attn.q.B"
    assert factor_label("fc.lora_A.other") == "fc.A.other" and factor_label("head") is None
    assert METRICS.get("lora_residual").source == "lora"


# ---------------------------------------------------------------------------- a LoRA run
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, digits):
    from conftest import small_config

    from driftscope.data import TensorData
    from driftscope.models.lora import PretrainConfig, lora_factory, pretrained_base

    folder = tmp_path_factory.mktemp("lora")
    pre = PretrainConfig(epochs=1, dim=8, heads=2, hidden=16, depth=1)
    x = (digits.train_x - 0.3) / 0.4
    base = pretrained_base(x[:200], digits.train_y[:200], pre, folder)
    built = []

    def factory():
        model = lora_factory(base, pre, rank=2)()
        built.append(model)
        return model

    data = TensorData(x[200:600], digits.train_y[200:600], x[:100], digits.train_y[:100])
    cfg = small_config(train__clients=4, data__alpha=0.1, record__probe_size=0, train__lr=0.2)
    path = train(cfg, folder / "lora.h5", model=factory, dataset=data)
    return path, base, built, pre


def test_the_frozen_base_is_unchanged_and_only_adapters_and_head_train(lora_run):
    path, base, built, pre = lora_run
    assert built  # the training model
    for model in built:
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert ".lora_" in name or name.startswith("head.")
            else:  # bit for bit the pretrained weights (PEFT's names: <module>.base_layer.<p>)
                original = name.replace(".base_layer.", ".")
                assert torch.equal(p, base[original]), name
    with open_run(path) as run:
        names = [p.name for p in run.params]
        assert names and all(".lora_" in n or n.startswith("head.") for n in names)
        assert len(lora_pairs(names)) == 6 * pre.depth  # q, k, v, proj, fc1, fc2 per block
        labels = [layer.label for layer in run.layers]
        assert labels[:2] == ["blocks.0.attn.q.A", "blocks.0.attn.q.B"] and labels[-1] == "head"
        full = sum(v.numel() for v in base.values())
        assert run.numel < full
        # FedAvg traffic: the trainable values down and up, float32, per client
        assert run.bytes_per_round == 2 * 4 * run.numel * run.clients_per_round


def test_the_lora_measures_equal_a_recomputation_from_the_stored_adapters(lora_run):
    path = lora_run[0]
    with open_run(path) as run:
        table = drift_table(run)
        pairs = lora_pairs(p.name for p in run.params)
        assert len(run.update_rounds) == run.num_rounds
        for pair in pairs:
            dA, dB = run.updates(pair.a), run.updates(pair.b)
            A, B = run.global_params(pair.a), run.global_params(pair.b)
            # the global adapter a round starts from is the last one plus the mean update (FedAvg)
            for d, g in ((dA, A), (dB, B)):
                np.testing.assert_allclose(g[1:], g[:-1] + d[:-1].mean(axis=1), rtol=0, atol=1e-6)
            for layer_param, d in ((pair.a, dA), (pair.b, dB)):
                layer = run.param(layer_param).layer
                rows = table[(table.layer == layer) & (table.metric == "relative_variance")]
                flat = torch.from_numpy(d.reshape(d.shape[0], d.shape[1], -1).astype(np.float64))
                slow = [relative_variance(update_gram(r).numpy()) for r in flat]
                np.testing.assert_allclose(rows.value, slow, rtol=1e-6)
            for layer_param in (pair.a, pair.b):
                layer = run.param(layer_param).layer
                rows = table[(table.layer == layer) & (table.metric == "lora_residual")]
                slow = [
                    _residual_slow(dA[i], dB[i], A[i], B[i], np.ones(dA.shape[1]))
                    for i in range(len(dA))
                ]
                np.testing.assert_allclose(rows.value, slow, rtol=1e-9)
                assert (rows.value > 0).all()  # skewed clients: never the same adapters
        head = table[table.layer == "head"]
        assert "lora_residual" not in set(head.metric)


def test_an_interrupted_lora_run_resumes_with_its_global_adapters(lora_run, tmp_path, digits):
    """The global factors are cut to the committed rounds and continue on resume: the resumed run
    holds what the uninterrupted one holds."""
    from conftest import small_config

    from driftscope.data import TensorData
    from driftscope.engine.events import Hook
    from driftscope.engine.training import resume
    from driftscope.models.lora import lora_factory

    class StopAt(Hook):
        def on_round_start(self, event):
            if event.round == 2:
                raise KeyboardInterrupt

    whole, base, _, pre = lora_run
    factory = lora_factory(base, pre, rank=2)
    x = (digits.train_x - 0.3) / 0.4
    data = TensorData(x[200:600], digits.train_y[200:600], x[:100], digits.train_y[:100])
    cfg = small_config(train__clients=4, data__alpha=0.1, record__probe_size=0, train__lr=0.2)
    path = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, model=factory, dataset=data, hooks=[StopAt()])
    resume(path, model=factory, dataset=data)
    with open_run(path) as run, open_run(whole) as ref:
        assert run.status == "complete" and list(run.update_rounds) == [0, 1, 2]
        for pair in lora_pairs(p.name for p in run.params):
            for name in (pair.a, pair.b):
                np.testing.assert_array_equal(run.global_params(name), ref.global_params(name))


def test_the_residual_of_a_sample_weighted_run_uses_the_client_sizes(lora_run, tmp_path, digits):
    from conftest import small_config

    from driftscope.data import TensorData
    from driftscope.models.lora import lora_factory

    _, base, _, pre = lora_run
    x = (digits.train_x - 0.3) / 0.4
    data = TensorData(x[200:600], digits.train_y[200:600], x[:100], digits.train_y[:100])
    cfg = small_config(
        train__clients=4,
        train__rounds=2,
        train__weighting="samples",
        data__alpha=0.1,
        record__probe_size=0,
    )
    path = train(cfg, tmp_path / "weighted.h5", model=lora_factory(base, pre, rank=2), dataset=data)
    with open_run(path) as run:
        sizes = np.asarray(run.client_sizes, dtype=np.float64)
        assert len(set(sizes)) > 1  # unequal clients: the weights matter
        table = drift_table(run)
        pair = lora_pairs(p.name for p in run.params)[0]
        dA, dB = run.updates(pair.a), run.updates(pair.b)
        A, B = run.global_params(pair.a), run.global_params(pair.b)
        rows = table[(table.layer == run.param(pair.b).layer) & (table.metric == "lora_residual")]
        slow = [
            _residual_slow(dA[i], dB[i], A[i], B[i], sizes[run.participants[i]])
            for i in range(len(dA))
        ]
        np.testing.assert_allclose(rows.value, slow, rtol=1e-9)


def test_lora_tables_csv_and_figure(lora_run, tmp_path, capsys):
    from driftscope.analysis import layer_summary
    from driftscope.analysis.lora import lora_module_summary, lora_table
    from driftscope.cli import main
    from driftscope.figures.lora import write_lora_figures

    path = lora_run[0]
    with open_run(path) as run:
        table = lora_table(run)
        assert len(table) == run.num_rounds * 6
        summary = lora_module_summary(run)
        assert list(summary.module)[:2] == ["blocks.0.attn.q", "blocks.0.attn.k"]
        assert summary.notna().all().all()
        layers = layer_summary(run)
        assert "lora_residual" in layers.columns
        assert layers.set_index("layer")["lora_residual"].notna().sum() == 12
    csv = tmp_path / "drift.csv"
    assert main(["analyze", str(path), "--csv", str(csv)]) == 0
    assert "lora_residual" in csv.read_text()
    written = write_lora_figures([path], tmp_path / "figs")
    assert [p.name for p in written] == [
        "lora_factors_dirichlet_0.1.png",
        "lora_factors_dirichlet_0.1.pdf",
    ]


def test_reproduce_lora_refuses_options_it_fixes(capsys):
    from driftscope.cli import main

    assert main(["reproduce", "--scenario", "lora", "--dataset", "mnist1d"]) == 2
    assert "fixes its dataset" in capsys.readouterr().err
    assert main(["reproduce", "--quick"]) == 2
    assert "--scenario lora" in capsys.readouterr().err


def test_the_factory_without_peft_is_a_one_line_error(monkeypatch):
    import sys

    from driftscope.errors import ConfigError
    from driftscope.models.lora import PretrainConfig, lora_factory

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ConfigError, match=r"pip install -e '.\[lora\]'"):
        lora_factory({}, PretrainConfig())


@pytest.mark.slow
def test_reproduce_lora_quick_prints_the_tables(tmp_path, capsys, monkeypatch):
    from driftscope.cli import main

    monkeypatch.setenv("DRIFTSCOPE_DATA", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["reproduce", "--scenario", "lora", "--quick", "-q", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Traffic per round" in text and "| alpha 0.1 |" in text and "| IID |" in text
    assert (out / "lora_factors_iid.png").exists()
    # a second call does not replace the runs silently
    assert main(["reproduce", "--scenario", "lora", "--quick", "-q", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_the_live_reader_exports_the_lora_measures(lora_run):
    """The live logger's reader (CommittedRounds) on a LoRA run: the same rows as the export after
    the run (drift_table's), the LoRA residual included."""
    from driftscope.export.live_rounds import CommittedRounds
    from driftscope.export.rounds import round_exports

    with open_run(lora_run[0]) as run:
        live = CommittedRounds(run).new()
        want = round_exports(run)
    assert [r.round for r in live] == [r.round for r in want]
    assert any(k.startswith("drift/lora_residual/") for r in want for k in r.scalars)
    for got, ref in zip(live, want):
        assert got.scalars.keys() == ref.scalars.keys(), got.round
        for name, value in ref.scalars.items():
            # one round's Grams against the whole run's stack: last-bit differences (test_export)
            assert got.scalars[name] == pytest.approx(value, rel=1e-13, abs=0), (got.round, name)


@pytest.mark.slow  # draws every figure the run supports
def test_driftscope_figures_draws_the_lora_figure(lora_run, tmp_path):
    from driftscope.figures import write_figures

    with open_run(lora_run[0]) as run:
        assert "lora_factors.png" in {p.name for p in write_figures([run], tmp_path)}


def test_a_damaged_cached_base_is_a_one_line_error(tmp_path):
    from driftscope.errors import ConfigError
    from driftscope.models.lora import PretrainConfig, pretrained_base

    pre = PretrainConfig(epochs=1, dim=8, heads=2, hidden=16, depth=1)
    path = tmp_path / "lora" / f"tinyvit_digits_{pre.key()}.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a tensor file")
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ConfigError, match="delete it to pretrain again"):
        pretrained_base(x, y, pre, tmp_path)
    torch.save({"other": torch.zeros(2)}, path)
    with pytest.raises(ConfigError, match="not the base model's state dict"):
        pretrained_base(x, y, pre, tmp_path)
