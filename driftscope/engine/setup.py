"""The one place a run is assembled: config -> data -> split -> model -> layout -> algorithm ->
test set.

:class:`RunSetup` is what every engine starts from: the in-process engine
(:class:`~driftscope.engine.inprocess.Simulator`), the Flower server (its layout, algorithm state, test
set and client sampling) and every Flower ClientApp (its clients' data, model and algorithm), so a
client ``i`` holds the same data and the model starts from the same parameters on every engine.

Seeding (all from ``RunConfig.seed``, see :mod:`driftscope.seeding`): the partition, the model's
initialisation and each round's client sample are separate streams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from driftscope.algorithms import Algorithm, build_algorithm
from driftscope.config import RunConfig
from driftscope.data import Dataset, TensorData, as_dataset, load_dataset, normalisation
from driftscope.data.partition import Split, client_split, hold_out, label_histogram
from driftscope.device import data_fits, device_name, resolve_device
from driftscope.engine.local import Augmentation, FlatParams
from driftscope.errors import ConfigError
from driftscope.models.buffers import buffer_names, clone_buffers, load_buffers, read_buffers
from driftscope.models.registry import build_model, check_head, check_model_fits, model_layout
from driftscope.own import model_name, recorded_config
from driftscope.seeding import derive_seed, numpy_rng

EVAL_BATCH = 1024


class RunSetup:
    """A run's data, partition, model, layout, algorithm and test set, built from ``cfg``.

    ``dataset`` may be passed to reuse an already loaded one (tests, benchmarks, notebooks) or to
    train on data of your own (:class:`~driftscope.data.TensorData`); ``model`` is a factory of
    your own model, ``split`` a split of your own (:mod:`driftscope.own`).
    Everything that can be wrong with the input fails here, before any file is touched.
    """

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset | TensorData | None = None,
        *,
        model: Callable[[], torch.nn.Module] | None = None,
        split: Split | None = None,
    ) -> None:
        self.cfg = cfg
        t = cfg.train
        self.dataset = as_dataset(
            dataset if dataset is not None else load_dataset(cfg.data.dataset, cfg.data.data_dir)
        )
        ds = self.dataset
        # a registered model that cannot take the inputs: one line now, not a traceback in round 0
        if model is None:
            check_model_fits(cfg.model.name, ds.input_shape, ds.num_classes, ds.name)
        self.device = resolve_device(t.device)
        device = self.device

        # data -> partition (a split of the user's own, or one of driftscope's from the seed)
        labels = ds.train_y.numpy()
        rng = numpy_rng(cfg.seed, "partition")
        parts = client_split(cfg.data, labels, t.clients, rng, split)
        # each client's held-out rows (data.client_test_fraction; engine/client_eval.py): the
        # client trains on the rest, which its size and label histogram describe
        self.parts, self.held_out = hold_out(parts, cfg.data.client_test_fraction, cfg.seed)
        self.label_histogram = label_histogram(labels, self.parts, ds.num_classes)
        self.augment = ds.augment if cfg.data.augment is None else cfg.data.augment
        mean, std = normalisation(ds, self.augment)  # (1, C, 1, ...) or None: as given
        self.augmentation = (
            Augmentation(ds.crop_padding, mean.to(device), std.to(device))
            if self.augment and mean is not None and std is not None
            else None
        )
        # client data on the device when they fit (driftscope.device.data_fits), else in host
        # memory (pinned for cuda) and copied per batch by local_train
        train_bytes = ds.train_x.element_size() * ds.train_x.nelement()
        self.data_on_device = data_fits(train_bytes, device)
        home = device if self.data_on_device else torch.device("cpu")

        def normalised(x: torch.Tensor) -> torch.Tensor:
            return x if mean is None or std is None else (x - mean) / std

        train_x = ds.train_x if self.augment else normalised(ds.train_x)
        train_x, train_y = train_x.to(home), ds.train_y.to(home)
        self.client_x = [train_x[torch.from_numpy(p).to(home)] for p in self.parts]
        self.client_y = [train_y[torch.from_numpy(p).to(home)] for p in self.parts]
        if not self.data_on_device and device.type == "cuda":
            self.client_x = [t.pin_memory() for t in self.client_x]
            self.client_y = [t.pin_memory() for t in self.client_y]
        test_x = normalised(ds.test_x)
        test_home = device if data_fits(test_x.element_size() * test_x.nelement(), device) else home
        # the held-out rows, normalised as the test set (none when nothing is held out)
        self.client_test_x: list[torch.Tensor] = []
        self.client_test_y: list[torch.Tensor] = []
        if any(len(h) for h in self.held_out):
            held_x, held_y = normalised(ds.train_x).to(test_home), ds.train_y.to(test_home)
            index = [torch.from_numpy(h).to(test_home) for h in self.held_out]
            self.client_test_x = [held_x[i] for i in index]
            self.client_test_y = [held_y[i] for i in index]
        self.test_x = test_x.to(test_home)
        self.test_y = ds.test_y.to(test_home)

        # model: a registered one by name, or the user's own factory (called for the training
        # model and the recorder's probe model; the seed fixes the initial weights)
        self._factory = model
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = self.build_model()
        if model is not None and not isinstance(self.model, torch.nn.Module):
            raise ConfigError(
                f"model= must be a function that returns a torch.nn.Module (it returned a "
                f"{type(self.model).__name__}): pass the class or a lambda, not an instance"
            )
        # the run file names what was used: the dataset's and model's own names, the split
        self.cfg = cfg = recorded_config(
            cfg,
            dataset=ds.name if dataset is not None else None,
            model=model_name(model, self.model) if model is not None else None,
            partition="custom" if split is not None else None,
        )
        self.layout = model_layout(self.model, cfg.model.head, cfg.model.head_last_k)
        check_head(t.algorithm, self.layout, cfg.model.head, cfg.model.head_last_k)
        self.flat = FlatParams(self.model, self.layout, device)  # initialised on the CPU
        self.initial_params = self.flat.params.clone()
        # frozen parameters (requires_grad False): the model's own, never trained or sent
        self.frozen = {n: p for n, p in self.model.named_parameters() if not p.requires_grad}
        # buffers (driftscope.models.buffers): their names and initial values; "local": each client
        # keeps its own (the in-process engine only)
        self.buffer_names = buffer_names(self.model)
        self.initial_buffers = clone_buffers(read_buffers(self.model, self.buffer_names))
        self.local_buffers = cfg.model.buffers == "local" and bool(self.buffer_names)

        # algorithm
        self.algorithm: Algorithm = build_algorithm(t, self.layout, t.clients).to(device)

    # ------------------------------------------------------------------ what engines ask
    @property
    def num_clients(self) -> int:
        return self.cfg.train.clients

    @property
    def device_name(self) -> str:
        """The training device as the run file stores it, e.g. ``cuda:0 (NVIDIA H100 ...)``."""
        return device_name(self.device)

    def client_size(self, client: int) -> int:
        """How many training samples ``client`` holds."""
        return len(self.parts[client])

    def build_model(self) -> torch.nn.Module:
        """A fresh model of this run's architecture (its parameters are not the run's)."""
        if self._factory is not None:
            return self._factory()
        ds = self.dataset
        return build_model(self.cfg.model.name, ds.input_shape, ds.num_classes)

    def sample_clients(self, round: int) -> list[int]:
        """The clients taking part in ``round`` (sorted; all clients when client_fraction = 1)."""
        k = self.cfg.train.clients_per_round
        if k == self.num_clients:
            return list(range(self.num_clients))
        rng = numpy_rng(self.cfg.seed, "sampling", round)
        return sorted(int(i) for i in rng.choice(self.num_clients, size=k, replace=False))

    def evaluates(self, round: int) -> bool:
        """Whether the global model is evaluated after ``round`` (every ``eval_every``, and last)."""
        t = self.cfg.train
        return (round + 1) % t.eval_every == 0 or round + 1 == t.rounds

    @torch.no_grad()
    def evaluate(
        self,
        params: torch.Tensor,
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of ``params`` with the global ``buffers`` (by name;
        empty when the model has none) on the test set, or on the normalised inputs ``x`` with
        labels ``y`` (a client's held-out rows); NaN for no rows."""
        x = self.test_x if x is None else x
        y = self.test_y if y is None else y
        if not len(y):
            return float("nan"), float("nan")
        self.flat.params.copy_(params)
        load_buffers(self.model, buffers)
        self.model.eval()
        device = self.device
        # summed on the device in float64 (float32 on mps) and read once
        dtype = torch.float32 if device.type == "mps" else torch.float64
        total = torch.zeros((), dtype=dtype, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, len(y), EVAL_BATCH):
            xb = x[start : start + EVAL_BATCH].to(device, non_blocking=True)
            yb = y[start : start + EVAL_BATCH].to(device, non_blocking=True)
            logits = self.model(xb)
            total += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
        n = len(y)
        return float(total) / n, int(correct) / n
