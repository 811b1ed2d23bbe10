"""The ServerApp: FedAvg wrapped by ``driftscope.flower.recording``, with a central evaluation
of the global model on the server's test set."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.result import Result

from drift_example.task import evaluate, new_model, test_set
from driftscope.flower import recording

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = new_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = evaluate(model, *test_set())
    return MetricRecord({"accuracy": accuracy, "loss": loss})


def run(
    grid: Grid,
    out: str | Path,
    rounds: int = 3,
    *,
    nodes: int = 4,
    alpha: float = 0.5,
    lr: float = 0.1,
    overwrite: bool = False,
) -> Result:
    """``rounds`` of FedAvg over ``nodes`` SuperNodes, recorded into ``out``."""
    strategy = recording(
        FedAvg(
            fraction_evaluate=0.5,
            min_available_nodes=nodes,
            min_train_nodes=nodes,
            min_evaluate_nodes=nodes // 2,
        ),
        out=out,
        dataset="synthetic 8x8 patterns (4 classes)",
        model="TinyCNN",
        partition=f"dirichlet alpha={alpha}",
        describe={"lr": lr, "local-steps": 5},
        model_factory=new_model,
        overwrite=overwrite,
    )
    initial = ArrayRecord(new_model().state_dict())
    return strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=central_evaluate
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    c = context.run_config
    run(
        grid,
        str(c["out"]),
        int(c["num-server-rounds"]),
        alpha=float(c["alpha"]),
        lr=float(c["lr"]),
        overwrite=bool(c["overwrite"]),
    )
