"""The federated fine-tuning scenario: LoRA adapters on a pretrained Transformer, under label skew.

``driftscope reproduce --scenario lora`` (:func:`run_lora`): a :class:`~driftscope.models.vit.TinyViT`
over 2x2 patches of the 8x8 digits is pretrained centrally on half of the training set, digits 0-4
only (:mod:`driftscope.models.lora`; cached), then fine-tuned by FedAvg with PEFT LoRA adapters
(rank 4) on every attention and MLP projection, base frozen, adapters and classifier trained, on
the other half (all ten digits) split over 10 clients: Dirichlet alpha 0.1 and 1.0 and an IID
control, each with the same seeds. Every round records Grams and stores the updates, so every
round has the LoRA measures (:mod:`driftscope.analysis.lora`). Returns the tables
:func:`format_lora` prints; the findings are in docs/lora.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from driftscope.errors import ConfigError

__all__ = ["LoraResult", "LoraSettings", "format_lora", "run_lora"]


@dataclass(frozen=True)
class LoraSettings:
    """The scenario's settings; :meth:`quick` is the test-sized one."""

    rounds: int = 30
    clients: int = 10
    local_epochs: int = 1
    lr: float = 0.1
    rank: int = 4
    lora_alpha: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    # (label, partition, Dirichlet alpha)
    conditions: tuple[tuple[str, str, float], ...] = (
        ("alpha 0.1", "dirichlet", 0.1),
        ("alpha 1.0", "dirichlet", 1.0),
        ("IID", "iid", 1.0),
    )
    pretrain_epochs: int = 40

    @classmethod
    def quick(cls) -> LoraSettings:
        return cls(
            rounds=3,
            clients=4,
            seeds=(0,),
            conditions=(("alpha 0.1", "dirichlet", 0.1), ("IID", "iid", 1.0)),
            pretrain_epochs=2,
        )


@dataclass
class LoraResult:
    """``runs``: one row per (condition, seed) with accuracy and the pooled measures;
    ``modules``: per condition and adapted module, the pooled measures averaged over seeds;
    ``traffic``: bytes per round of the LoRA runs against full fine-tuning."""

    runs: pd.DataFrame
    modules: pd.DataFrame
    traffic: dict[str, float] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)


def _data(settings: LoraSettings, data_dir: Path, log: Callable[[str], None] | None) -> tuple:
    import torch

    from driftscope.data import TensorData, load_dataset
    from driftscope.models.lora import PretrainConfig, pretrained_base, split_pretraining

    ds = load_dataset("digits", data_dir)
    assert ds.mean is not None and ds.std is not None
    mean, std = float(ds.mean[0]), float(ds.std[0])
    train_x, test_x = (ds.train_x - mean) / std, (ds.test_x - mean) / std
    cfg = PretrainConfig(epochs=settings.pretrain_epochs)
    pool, fed = split_pretraining(len(ds.train_y), cfg)
    base = pretrained_base(train_x[pool], ds.train_y[pool], cfg, data_dir, log)
    model = cfg.build()
    model.load_state_dict(base)
    with torch.no_grad():
        pretrained_acc = float((model.eval()(test_x).argmax(1) == ds.test_y).float().mean())
    full_numel = sum(p.numel() for p in model.parameters())
    data = TensorData(train_x[fed], ds.train_y[fed], test_x, ds.test_y, name="digits_finetune")
    return cfg, base, data, pretrained_acc, full_numel


def run_lora(
    out_dir: str | Path,
    *,
    settings: LoraSettings | None = None,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> LoraResult:
    """Pretrain (or load) the base, train every (condition, seed) into ``out_dir`` and read the
    runs back (see the module docstring). An existing run file is replaced only with
    ``overwrite`` (else a one-line :class:`ConfigError` before any training)."""
    import driftscope
    from driftscope.config import RunConfig
    from driftscope.data import default_data_dir
    from driftscope.models.lora import lora_factory, require_peft

    require_peft()
    s = settings or LoraSettings()
    out = Path(out_dir)
    jobs = [
        (c, seed, out / f"lora_{_slug(c[0])}_seed{seed}.h5")
        for c in s.conditions
        for seed in s.seeds
    ]
    existing = [p for _, _, p in jobs if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} exists: pass --overwrite to replace the scenario's runs, or --out "
            "another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(data_dir) if data_dir is not None else default_data_dir()
    pre, base, data, pretrained_acc, full_numel = _data(s, cache, log)
    factory = lora_factory(base, pre, rank=s.rank, alpha=s.lora_alpha)
    for (label, partition, alpha), seed, path in jobs:
        if log is not None:
            log(f"{label}, seed {seed}: {s.rounds} rounds -> {path}")
        cfg = RunConfig().replace(
            {
                "seed": seed,
                "train.clients": s.clients,
                "train.rounds": s.rounds,
                "train.local_epochs": s.local_epochs,
                "train.lr": s.lr,
                "data.partition": partition,
                "data.alpha": alpha,
                "record.updates_every": 1,
                "record.probe_size": 0,
            }
        )
        driftscope.train(
            cfg,
            path,
            model=factory,
            dataset=data,
            overwrite=True,
            progress=progress,
            threads=threads,
        )
    return _read_back(jobs, pretrained_acc, full_numel)


def _slug(label: str) -> str:
    return label.lower().replace(" ", "").replace(".", "")


def _read_back(jobs: list, pretrained_acc: float, full_numel: int) -> LoraResult:
    from driftscope.analysis.lora import lora_module_summary, lora_table
    from driftscope.runfile.reader import open_run

    rows, modules = [], []
    traffic: dict[str, float] = {}
    for (label, _, _), seed, path in jobs:
        with open_run(path) as run:
            per_module = lora_module_summary(run)
            table = lora_table(run)
            third = max(1, len(run.rounds) // 3)
            early = table[table["round"] < run.rounds[third]]["lora_residual"].mean()
            late = table[table["round"] >= run.rounds[-third]]["lora_residual"].mean()
            acc = run.metrics["test_accuracy"].to_numpy()
            rows.append(
                {
                    "condition": label,
                    "seed": seed,
                    "pretrained_acc": pretrained_acc,
                    "final_acc": float(acc[-1]),
                    "head_relvar": float(per_module["head_relative_variance"].iloc[0]),
                    "A_relvar": float(per_module["A_relative_variance"].mean()),
                    "B_relvar": float(per_module["B_relative_variance"].mean()),
                    "B>A_modules": int(
                        (
                            per_module["B_relative_variance"] > per_module["A_relative_variance"]
                        ).sum()
                    ),
                    "modules": len(per_module),
                    "A_cos": float(per_module["A_mean_pairwise_cosine"].mean()),
                    "B_cos": float(per_module["B_mean_pairwise_cosine"].mean()),
                    "residual": float(per_module["lora_residual"].mean()),
                    "residual_first_third": float(early),
                    "residual_last_third": float(late),
                }
            )
            modules.append(per_module.assign(condition=label, seed=seed))
            if not traffic:
                s = run.clients_per_round
                traffic = {
                    "trainable_values": float(run.numel),
                    "full_values": float(full_numel),
                    "lora_bytes_per_round": float(run.bytes_per_round),
                    "full_bytes_per_round": float(2 * 4 * full_numel * s),
                }
    per_run = pd.DataFrame(rows)
    by_module = (
        pd.concat(modules, ignore_index=True)
        .drop(columns="seed")
        .groupby(["condition", "module"], sort=False)
        .mean()
        .reset_index()
    )
    return LoraResult(per_run, by_module, traffic, [p for _, _, p in jobs])


def format_lora(result: LoraResult) -> str:
    """The scenario's tables as markdown."""
    from driftscope.experiments.compare_report import markdown_table

    runs = result.runs
    cols = [c for c in runs.columns if c not in ("seed", "modules")]
    mean = runs[cols].groupby("condition", sort=False).mean().reset_index()
    n = runs.groupby("condition", sort=False).size().to_numpy()
    mean.insert(1, "seeds", n)
    t = result.traffic
    ratio = t["lora_bytes_per_round"] / t["full_bytes_per_round"] if t else math.nan
    skewed = result.modules[result.modules["condition"] == runs["condition"].iloc[0]]
    lines = [
        "LoRA fine-tuning (FedAvg, adapters on q, k, v, proj, fc1, fc2; base frozen): mean over "
        "seeds; relvar = relative variance V/||m||^2 pooled over rounds (ratio of sums), mean over "
        "modules; cos = mean pairwise cosine of the client updates; residual = FedEx-LoRA's "
        "||mean(BA) - mean(B) mean(A)|| / ||mean(BA)||, mean over modules and rounds",
        markdown_table(mean),
        "",
        "Per run:",
        markdown_table(runs),
        "",
        f"Per adapted module, {runs['condition'].iloc[0]} (mean over seeds):",
        markdown_table(skewed.drop(columns="condition")),
        "",
        f"Traffic per round: {t.get('lora_bytes_per_round', 0):,.0f} bytes "
        f"({t.get('trainable_values', 0):,.0f} trainable values: adapters + classifier) against "
        f"{t.get('full_bytes_per_round', 0):,.0f} for full fine-tuning "
        f"({t.get('full_values', 0):,.0f} values): {ratio:.1%}",
    ]
    return "\n".join(lines)
