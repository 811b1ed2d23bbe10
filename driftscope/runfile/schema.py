"""The run-file layout: every HDF5 path, axis label and dtype, and the recording schedule.

This is the only module that spells a run-file path. The writer
(:mod:`driftscope.runfile.writer`), the recorder (:mod:`driftscope.engine.recorder`), the reader
(:mod:`driftscope.runfile.reader`) and the benchmarks build paths with the names and functions
below. Torch-free.

The layout drawn as a tree, what schema 2 adds to schema 1 (both readable:
:data:`READABLE_VERSIONS`) and the checksums (fletcher32 on every chunked dataset, a CRC-32 per
stored client update, :func:`row_crc32`; :func:`static_crc32` for the static parts):
``docs/file-format.md``. Next to the run file ``run.h5`` a writer holds the lock file
``run.h5.lock`` (:func:`lock_path`) and writes a new run to :func:`temp_path` before moving it
into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

try:  # ISA-L's CRC-32: ~50 GB/s; zlib's gives the same values at ~4 GB/s
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    from zlib import crc32

FORMAT = "driftscope-run"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

# ---------------------------------------------------------------------------------- root attrs
ATTR_FORMAT = "format"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_DRIFTSCOPE_VERSION = "driftscope_version"
ATTR_CONFIG = "config"
ATTR_ENVIRONMENT = "environment"
ATTR_CREATED = "created"
ATTR_ENGINE = "engine"
WRITER_HOST = "writer_host"  # who writes a "running" file: host (platform.node()) ...
WRITER_PID = "writer_pid"  # ... process id ...
WRITER_STARTED = "writer_started"  # ... and its start, seconds since the epoch (float)
RESUMED_FROM = "resumed_from"  # int64 array: the first round trained after each resume

# every chunked dataset carries a fletcher32 checksum, so a flipped byte is an error, not a number
# (the stored updates carry a CRC-32 per client row instead: UPDATE_CRC)
CHECKSUM = True


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file a writer holds next to the run file: ``<run file>.lock``."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def temp_path(path: str | os.PathLike, pid: int) -> Path:
    """Where a writer creates a new run before moving it onto ``path``: same directory, hidden."""
    p = Path(path)
    return p.with_name(f".{p.name}.{pid}.tmp")


# ---------------------------------------------------------------------------------- root
STATUS = "status"
STATUS_MESSAGE = "status_message"
STATUS_DTYPE = "S32"
MESSAGE_DTYPE = "S512"
STATUSES = ("running", "complete", "diverged", "interrupted", "failed")

RUNNING = "running"

# ---------------------------------------------------------------------------------- model
MODEL = "model"
MODEL_NUMEL = "numel"  # attrs of /model
MODEL_HEAD_NUMEL = "head_numel"
PARAM_FIELDS = ("name", "layer", "group", "shape", "offset", "numel")
LAYER_FIELDS = ("name", "label", "kind", "group", "numel")


def param_field(field: str) -> str:
    """``model/param_<field>``: one entry per parameter tensor, in model order."""
    return f"{MODEL}/param_{field}"


def layer_field(field: str) -> str:
    """``model/layer_<field>``: one entry per parameterised layer, in model order."""
    return f"{MODEL}/layer_{field}"


# ---------------------------------------------------------------------------------- partition
PARTITION = "partition"
LABEL_HISTOGRAM = "partition/label_histogram"
CLIENT_SIZE = "partition/client_size"

# ---------------------------------------------------------------------------------- metrics
METRICS = "metrics"
METRICS_ROUND = "metrics/round"  # commit marker
METRIC_NAMES = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "train_accuracy",
    "uplink_bytes",
    "downlink_bytes",
    "seconds",
)
CLIENTS = "clients"
CLIENT_METRICS = ("train_loss", "train_accuracy")
# the global model on each client's held-out data (data.client_test_fraction > 0; absent otherwise
# and in older files): (round, client) float64, NaN on rounds the model is not evaluated
CLIENT_TEST_METRICS = ("test_loss", "test_accuracy")
CLIENT_HELD_OUT_ATTR = "held_out_size"  # attr of clients/test_*: (client,) rows held out
# Flower engine: 1 where a sampled client's reply was an error or never came (round, client) int8
CLIENT_FAILED = "clients/failed"
ENGINE_ATTR = "engine"  # root attr written by the Flower engine ("flower"); absent: in-process
# A run recorded by driftscope.flower.recording (someone's Flower app): root attrs describing the
# app (JSON; what the caller did not name is "unknown"), the strategy (class and public settings,
# JSON) and where test_loss/test_accuracy come from; per-round series of the app's own metrics.
APP_ATTR = "app"
APP_STRATEGY_ATTR = "app_strategy"
APP_TEST_METRICS_ATTR = "app_test_metrics"
APP_CLIENT_IDENTITY_ATTR = "app_client_identity"
APP_HEAD_RULE_ATTR = "app_head_rule"
APP_GROUP = "app"
APP_CENTRAL = "app/central"  # app/central/<metric> (round,) float64: the app's evaluate_fn
APP_FEDERATED = "app/federated"  # app/federated/<metric> (round,): the strategy's aggregate
APP_TRAIN = "app/train"  # app/train/<metric> (round,): the strategy's aggregated train metrics
APP_NODE_ID = "app/node_id"  # (round, client) uint64: the Flower node id of each row, 0 = none


def metric_path(name: str) -> str:
    return f"{METRICS}/{name}"


def metric_dtype(name: str) -> str:
    return "int64" if name.endswith("_bytes") else "float64"


def client_metric_path(name: str) -> str:
    return f"{CLIENTS}/{name}"


# ---------------------------------------------------------------------------------- records
RECORDS = "records"
RECORD_ROUND = "records/round"
RECORD_CLIENTS = "records/clients"
UPDATE_ROUND = "records/update_round"
CKA_ROUND = "records/cka_round"
PROBE_INDEX = "records/probe_index"
GRAM = "records/gram"
UPDATES = "records/updates"
UPDATE_CRC = "records/update_crc"  # (upd, stored, S) uint32: CRC-32 of each stored client update
UPDATE_CRC_PARAMS = "params"  # attr of records/update_crc: JSON list of the stored parameters
UPDATE_CHECKSUM_ATTR = (
    "checksum"  # attr of records/updates/<param>: "crc32" when UPDATE_CRC holds it
)
UPDATE_CHECKSUM_CRC32 = "crc32"
CONTROL_NORM = "records/control_norm"
CKA = "records/cka"
# the global model the round started from, w, per parameter: ||w||^2 (rec,) and <w, d_i> (rec, S);
# with ||d_i||^2 from the Gram diagonal they give cos(w, w + d_i) exactly (L-DAWA's angle)
GLOBAL_WEIGHTS = "records/global"
GLOBAL_DTYPE = "float64"
# the global values of the LoRA factors (metrics/lora.py) the round started from, on rounds that
# store updates: records/global_params/<param> (upd, numel) f64 (FedEx-LoRA's residual needs them)
GLOBAL_PARAMS = "records/global_params"
# the global model kept every record.global_every rounds and at the last (absent when 0 and in
# older files): its flat trained parameters (kept, P) float32, its buffers, the frozen parameters
GLOBAL_MODEL = "records/global_model"
GLOBAL_MODEL_ROUND = "records/global_model/round"
GLOBAL_MODEL_PARAMS = "records/global_model/params"
GLOBAL_MODEL_BUFFERS = "records/global_model/buffers"
GLOBAL_MODEL_FROZEN = "records/global_model/frozen"
AX_GLOBAL_MODEL_ROUND = ("kept",)
AX_GLOBAL_MODEL_PARAMS = ("kept", "value")
CKA_KINDS = ("linear", "rbf", "debiased")
RECORD_POLICY_ATTRS = ("every", "updates_every", "cka_every", "probe_size")
# attr of RECORDS: "float32" or "float64", the probe Grams' arithmetic (record.cka_precision);
# absent in files written before it: float64
CKA_PRECISION_ATTR = "cka_precision"
CKA_SKIPPED_ATTR = "cka_skipped"  # records attr: JSON {layer: why probe CKA skipped it}

GRAM_DTYPE = "float64"
CKA_DTYPE = "float64"
CONTROL_NORM_DTYPE = "float32"

# axis labels
AX_ROUND = ("round",)
AX_RECORD = ("record",)
AX_RECORD_CLIENT = ("record", "client")
AX_GRAM = ("record", "client", "client")
AX_CONTROL_NORM = ("record", "server+client")
AX_UPDATE_ROUND = ("update",)
AX_UPDATES = ("update", "client", "value")
AX_UPDATE_CRC = ("update", "param", "client")
AX_CKA_ROUND = ("cka",)
AX_CKA = ("cka", "model", "model")
AX_GLOBAL_SQ_NORM = ("record",)
AX_GLOBAL_DOT = ("record", "client")
AX_GLOBAL_PARAMS = ("update", "value")
AX_ROUND_CLIENT = ("round", "client")


def gram_path(param: str) -> str:
    return f"{GRAM}/{param}"


def updates_path(param: str) -> str:
    return f"{UPDATES}/{param}"


STATIC_CRC = "static_crc32"  # root attr, JSON {name: CRC-32}: the config attribute ("config")
# and the small static datasets (partition, every model field, names included) that have no chunk
# checksum; the reader checks each when it reads it (absent in files written before it: unchecked)


def static_crc32(value: str | np.ndarray) -> int:
    """The CRC-32 of a static part as :data:`STATIC_CRC` holds it: a string's UTF-8 bytes, an
    array of strings' UTF-8 bytes each followed by a NUL byte, a numeric array's bytes as stored
    (little-endian int64)."""
    if isinstance(value, str):  # h5py gives undecodable bytes as surrogates: CRC their bytes
        return int(crc32(value.encode(errors="surrogateescape")))
    array = np.asarray(value)
    if array.dtype.kind in "OSU":
        items = (
            v if isinstance(v, bytes) else str(v).encode(errors="surrogateescape")
            for v in array.ravel()
        )
        return int(crc32(b"".join(v + b"\0" for v in items)))
    return int(crc32(np.ascontiguousarray(array, dtype="<i8").view(np.uint8)))


def row_crc32(rows: np.ndarray) -> np.ndarray:
    """The CRC-32 (zlib's, ISO-HDLC) of each row of ``rows`` (S, numel), over the row's bytes in
    the stored dtype: what ``update_crc`` holds for one stored round of a parameter."""
    return np.array([crc32(np.ascontiguousarray(row).view(np.uint8)) for row in rows], np.uint32)


def global_sq_norm_path(param: str) -> str:
    return f"{GLOBAL_WEIGHTS}/sq_norm/{param}"


def global_dot_path(param: str) -> str:
    return f"{GLOBAL_WEIGHTS}/dot/{param}"


def global_params_path(param: str) -> str:
    return f"{GLOBAL_PARAMS}/{param}"


def global_model_buffer_path(name: str) -> str:
    return f"{GLOBAL_MODEL_BUFFERS}/{name}"


def global_model_frozen_path(name: str) -> str:
    return f"{GLOBAL_MODEL_FROZEN}/{name}"


def control_norm_path(param: str) -> str:
    return f"{CONTROL_NORM}/{param}"


def cka_path(kind: str, layer: str) -> str:
    return f"{CKA}/{kind}/{layer}"


# ---------------------------------------------------------------------------------- algorithm
# Per-round, per-layer values an algorithm reports (``Algorithm.round_record``), e.g. which layers
# carry control variates (fedpvr_auto): algorithm/<key> (round, layer), one row per committed round.
ALGORITHM = "algorithm"
AX_ROUND_LAYER = ("round", "layer")


def algorithm_record_path(key: str) -> str:
    return f"{ALGORITHM}/{key}"


# rows to keep when a run is truncated to its committed rounds: every growable dataset under
# these groups has one row per committed round ...
ROUND_GROUPS = (METRICS, CLIENTS, ALGORITHM)  # ALGORITHM only where an algorithm reports
# ... and each record index's committed rows (round <= last committed) are shared by the
# datasets and groups listed with it
RECORD_INDEXES = {
    RECORD_ROUND: (RECORD_CLIENTS, GRAM, CONTROL_NORM, GLOBAL_WEIGHTS),
    UPDATE_ROUND: (UPDATES, UPDATE_CRC, GLOBAL_PARAMS),
    CKA_ROUND: (CKA,),
    GLOBAL_MODEL_ROUND: (GLOBAL_MODEL_PARAMS, GLOBAL_MODEL_BUFFERS),
}

# ---------------------------------------------------------------------------------- resume state
STATE = "state"
STATE_ROUND = "state/round"
STATE_SLOTS = 2


def state_path(name: str) -> str:
    """``state/<name>``: (2, *shape), one slot per round parity."""
    return f"{STATE}/{name}"


def state_slot(round: int) -> int:
    """The slot that holds the state at the end of ``round`` (double buffering)."""
    return round % STATE_SLOTS


# ---------------------------------------------------------------------------------- schedule
def records(round: int, every: int) -> bool:
    """Whether ``round`` gets per-layer records (Gram matrices) under ``record.every``."""
    return round % every == 0


def stores_updates(round: int, every: int, updates_every: int) -> bool:
    """Whether ``round`` stores full client updates (every ``updates_every`` recorded rounds)."""
    return updates_every > 0 and round % (every * updates_every) == 0


def keeps_global(round: int, global_every: int, rounds: int) -> bool:
    """Whether the global model after ``round`` is kept: every ``global_every`` rounds (after
    rounds k - 1, 2k - 1, ..., as evaluation) and after the last; never when 0."""
    return global_every > 0 and ((round + 1) % global_every == 0 or round + 1 == rounds)


def does_cka(round: int, every: int, cka_every: int, probe_size: int) -> bool:
    """Whether ``round`` computes probe CKA (every ``cka_every`` recorded rounds)."""
    return probe_size > 0 and round % (every * cka_every) == 0


# ---------------------------------------------------------------------------------- validation
def expected(path: str) -> tuple[str, int | None]:
    """What the dataset at ``path`` must be: ("str" | "num", number of axes or None for any).

    The reader checks every dataset against this before using it, so a file whose dataset was
    replaced by one of another type or shape is a clear error rather than a wrong answer."""
    if path in (STATUS, STATUS_MESSAGE):
        return "str", 0
    if path.startswith(f"{MODEL}/"):
        numeric = path.endswith(("_offset", "_numel"))
        return ("num" if numeric else "str"), 1
    two_axes = (LABEL_HISTOGRAM, RECORD_CLIENTS)
    if path in two_axes or path.startswith(
        (f"{CLIENTS}/", f"{CONTROL_NORM}/", f"{GLOBAL_WEIGHTS}/dot/", f"{GLOBAL_PARAMS}/")
    ):
        return "num", 2
    if path.startswith(f"{ALGORITHM}/"):
        return "num", 2
    if path == UPDATE_CRC or path.startswith((f"{GRAM}/", f"{UPDATES}/", f"{CKA}/")):
        return "num", 3
    if path.startswith(f"{STATE}/") and path != STATE_ROUND:
        return "num", None
    if path == GLOBAL_MODEL_PARAMS:
        return "num", 2
    if path.startswith((f"{GLOBAL_MODEL_BUFFERS}/", f"{GLOBAL_MODEL_FROZEN}/")):
        return "num", None
    return "num", 1  # metrics/*, partition/client_size, record indices, probe_index, state/round
