import pytest
import torch
from conftest import small_config

from driftscope import open_run, train
from driftscope.data.transforms import augment_batch
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.errors import DivergenceError


def test_one_seed_repeats_the_run(digits):
    cfg = small_config(train__rounds=2, train__client_fraction=0.5, record__enabled=False)
    a, b = Simulator(cfg, digits), Simulator(cfg, digits)
    sa, sb = a.run(), b.run()
    assert torch.equal(a.global_params, b.global_params)
    assert [s.clients for s in sa] == [s.clients for s in sb]
    assert [s.test_loss for s in sa] == [s.test_loss for s in sb]
    c = Simulator(
        small_config(seed=1, train__rounds=2, train__client_fraction=0.5, record__enabled=False),
        digits,
    )
    c.run()
    assert not torch.equal(a.global_params, c.global_params)


def test_client_sampling_and_local_steps(digits):
    cfg = small_config(train__rounds=3, train__client_fraction=0.3, train__local_steps=4)
    steps = []

    from driftscope.engine.events import Hook

    class Steps(Hook):
        def on_client_end(self, event):
            steps.append(event.steps)

    summaries = Simulator(cfg, digits).run([Steps()])
    assert all(len(s.clients) == 3 for s in summaries)
    assert len({tuple(s.clients) for s in summaries}) > 1
    assert steps == [4] * 9


def test_communication_is_counted_per_participating_client(digits):
    cfg = small_config(
        train__rounds=1,
        train__client_fraction=0.5,
        train__algorithm="scaffold",
        record__enabled=False,
    )
    sim = Simulator(cfg, digits)
    (summary,) = sim.run()
    assert summary.uplink_bytes == summary.downlink_bytes == 5 * 2 * 4 * sim.layout.numel


class DivergeAt(Hook):
    """Stands for a loss that turns NaN in round ``at`` (the trainer's DivergenceError)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_client_end(self, event) -> None:
        if event.round == self.at:
            raise DivergenceError(f"training diverged at round {event.round}, client 0")


def test_divergence_stops_and_keeps_a_valid_file(tmp_path, digits):
    path = tmp_path / "nan.h5"
    with pytest.raises(DivergenceError, match=r"round 2, client \d+"):
        train(small_config(train__rounds=5), path, dataset=digits, hooks=[DivergeAt(2)])
    with open_run(path) as run:
        assert run.status == "diverged"
        assert "client" in run.status_message
        assert len(run.metrics) == run.num_rounds == 2


def test_divergence_in_round_0_leaves_no_file_and_keeps_an_old_run(tmp_path, digits, make_run):
    """A run that never commits a round is never moved onto its path: --overwrite of a good run
    by one that diverges at once keeps the good run, and without one there is no file to block a
    retry."""
    path = tmp_path / "nan.h5"
    with pytest.raises(DivergenceError, match=r"round 0, client \d+"):
        train(small_config(train__lr=1e6), path, dataset=digits)
    assert sorted(tmp_path.iterdir()) == []  # no stub, no temporary file, no lock left
    good = tmp_path / "good.h5"
    good.write_bytes(make_run().read_bytes())
    before = good.read_bytes()
    with pytest.raises(DivergenceError, match=r"round 0"):
        train(small_config(train__lr=1e6), good, dataset=digits, overwrite=True)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.h5"]


def test_augmentation_is_a_crop_and_flip(digits):
    x = torch.rand(16, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, 2, gen)
    again = augment_batch(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        found = any(
            torch.equal(out[i], padded[i, :, a : a + 8, b : b + 8])
            or torch.equal(out[i], padded[i, :, a : a + 8, b : b + 8].flip(-1))
            for a in range(5)
            for b in range(5)
        )
        assert found


def test_train_picks_threads_as_the_command_line_and_records_them(tmp_path, digits):
    """driftscope.train (as the notebooks call it) uses one torch thread for a small model, as
    `driftscope run` does, records it, and gives the caller's count back; threads= overrides."""
    from driftscope import open_run

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = small_config(train__rounds=1, record__enabled=False)
        train(cfg, tmp_path / "a.h5", dataset=digits)
        assert torch.get_num_threads() == 2
        train(cfg, tmp_path / "b.h5", dataset=digits, threads=2)
    finally:
        torch.set_num_threads(before)
    with open_run(tmp_path / "a.h5") as a, open_run(tmp_path / "b.h5") as b:
        assert a.environment["torch_threads"] == 1
        assert b.environment["torch_threads"] == 2
