"""The in-process engine's resume state: what continuing a run needs besides its config, by name.

:meth:`~driftscope.engine.inprocess.Simulator.state` gathers it with :func:`named_state`, the run
file keeps it under ``state/<name>`` (:meth:`~driftscope.runfile.writer.RunWriter.commit` writes
:func:`host_state`'s arrays once per round), and a resumed run reads it back with
:func:`algorithm_state`, :func:`saved_buffers` and :func:`saved_client_buffers`::

    global_params            (P,)       the global model
    algorithm/<k>            ...        Algorithm.state_dict()[k] (control variates)
    buffers/<name>           ...        the global buffers
    client_buffers/<name>    (N, ...)   each client's own buffers (model.buffers "local")
    client_buffers_set       (N,) u8    1 where the client has buffers of its own
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from driftscope.engine.events import StateRows
from driftscope.errors import RunFileError

GLOBAL_PARAMS = "global_params"  # state name of the global model; algorithm state: "algorithm/<k>"
ALGORITHM_STATE = "algorithm/"
BUFFER_STATE = "buffers/"  # the global buffers: "buffers/<name>"
CLIENT_BUFFER_STATE = "client_buffers/"  # model.buffers "local": (N, ...) per buffer, and
CLIENT_BUFFER_SET = "client_buffers_set"  # (N,) uint8: 1 where the client has buffers of its own


def named_state(
    global_params: torch.Tensor,
    algorithm_state: Mapping[str, torch.Tensor],
    global_buffers: Mapping[str, torch.Tensor],
    client_buffers: tuple[Mapping[str, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The state by name, the tensors as given (live: copy what you keep); ``client_buffers`` is
    (each client's own buffers, which clients have them) in "local" mode, else None."""
    out = {GLOBAL_PARAMS: global_params}
    for name, tensor in algorithm_state.items():
        out[ALGORITHM_STATE + name] = tensor
    for name, tensor in global_buffers.items():
        out[BUFFER_STATE + name] = tensor
    if client_buffers is not None:
        per_client, which = client_buffers
        for name, tensor in per_client.items():
            out[CLIENT_BUFFER_STATE + name] = tensor
        out[CLIENT_BUFFER_SET] = which
    return out


def host_state(
    state: Mapping[str, torch.Tensor], changed_rows: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray | StateRows]:
    """``state`` as host arrays for the run file: an algorithm table named in ``changed_rows``
    (``Algorithm.changed_rows()``, e.g. ``c_clients``) as only those rows
    (:class:`~driftscope.engine.events.StateRows`), so committing costs O(sampled clients), not
    O(all clients); every other tensor whole."""
    out: dict[str, np.ndarray | StateRows] = {}
    for name, tensor in state.items():
        key = name[len(ALGORITHM_STATE) :] if name.startswith(ALGORITHM_STATE) else None
        if key is not None and key in changed_rows:
            index = changed_rows[key]
            values = tensor[torch.from_numpy(index).to(tensor.device)]
            out[name] = StateRows(index, values.cpu().numpy())
        else:
            out[name] = tensor.detach().cpu().numpy()
    return out


def algorithm_state(state: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """The algorithm's part of a saved ``state``, by its own names (``Algorithm.state_dict()``)."""
    return {
        k[len(ALGORITHM_STATE) :]: torch.as_tensor(v)
        for k, v in state.items()
        if k.startswith(ALGORITHM_STATE)
    }


def saved_buffers(
    state: Mapping[str, np.ndarray | torch.Tensor], names: list[str]
) -> dict[str, torch.Tensor]:
    """The global buffers ``names`` of a saved ``state``; a :class:`~driftscope.errors.RunFileError`
    when it has none of them (a file written before buffers were federated state)."""
    missing = [n for n in names if BUFFER_STATE + n not in state]
    if missing:
        raise RunFileError(
            f"the run file's resume state has no buffers ({missing[0]}, ...): it was written "
            "before buffers were federated state; start the run again"
        )
    return {name: torch.as_tensor(state[BUFFER_STATE + name]) for name in names}


def saved_client_buffers(
    state: Mapping[str, np.ndarray | torch.Tensor], names: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The clients' own buffers ``names`` of a saved ``state`` ("local" mode) and which clients
    have them."""
    per_client = {name: torch.as_tensor(state[CLIENT_BUFFER_STATE + name]) for name in names}
    return per_client, torch.as_tensor(state[CLIENT_BUFFER_SET])
