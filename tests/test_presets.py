"""The paper presets hold the reference setup's numbers, typed here from docs/science.md."""

from pathlib import Path

import pytest

from driftscope.config import RunConfig

CONFIGS = Path(__file__).parent.parent / "configs"

# docs/science.md, "Reference setup": CIFAR-10 lr 0.05, CIFAR-100 lr 0.1; everything else shared
PAPER = {
    "cifar10": {"lr": 0.05},
    "cifar100": {"lr": 0.1},
}


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_preset_matches_the_reference_setup(dataset):
    cfg = RunConfig.from_toml(CONFIGS / f"fedpvr_{dataset}.toml")
    d, m, t = cfg.data, cfg.model, cfg.train
    assert d.dataset == dataset
    assert d.partition == "dirichlet" and d.alpha == 0.1  # Dirichlet label skew, alpha 0.1
    assert d.min_share == 0.5  # redrawn until each client holds >= half the average share
    assert d.augment is True  # RandomCrop(32, padding=4) + flip
    assert m.name == "vgg11" and m.head == () and m.head_last_k is None  # head = 3 linear layers
    assert t.algorithm == "fedpvr"
    assert t.clients == 10 and t.client_fraction == 1.0  # 10 clients, all every round
    assert t.local_epochs == 10 and t.local_steps is None  # 10 local epochs
    assert t.batch_size == 128 and t.drop_last is True  # batch 128, drop_last
    assert t.lr == PAPER[dataset]["lr"]  # constant lr
    assert t.weight_decay == 0.0
    assert t.momentum == 0.0 and t.params.body_momentum == 0.9  # 0.9 on body, 0 on head
    assert t.server_lr == 1.0 and t.weighting == "uniform"  # unweighted mean, server lr 1
    assert t.rounds == 100  # about 100 rounds


def test_cifar_split_and_normalisation_are_the_papers():
    """45,000 train images (the first ones) and the CIFAR-10 statistics, for both datasets."""
    from driftscope.data import CIFAR_MEAN, CIFAR_STD, CIFAR_TRAIN

    assert CIFAR_TRAIN == 45_000
    assert CIFAR_MEAN == (0.4914, 0.4822, 0.4465)
    assert CIFAR_STD == (0.2023, 0.1994, 0.2010)


def test_every_preset_is_checked():
    """Every preset in configs/ is covered by the test above."""
    assert sorted(p.stem for p in CONFIGS.glob("*.toml")) == [f"fedpvr_{d}" for d in sorted(PAPER)]
