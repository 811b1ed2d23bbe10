"""The ClientApp: a few SGD steps on the node's partition. Besides ``num-examples`` and its loss,
the train reply carries what driftscope records per client: the node's ``partition-id`` and the
partition's ``label-counts`` (``driftscope.flower.client_metrics``)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from drift_example.task import CLASSES, evaluate, new_model, partition
from driftscope.flower import client_metrics

app = ClientApp()


def _data(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    pid = int(context.node_config["partition-id"])
    parts = int(context.node_config["num-partitions"])
    return partition(pid, parts, float(context.run_config.get("alpha", 0.5)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    model = new_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = _data(context)
    opt = torch.optim.SGD(model.parameters(), lr=float(context.run_config.get("lr", 0.1)))
    for _ in range(int(context.run_config.get("local-steps", 5))):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    metrics = {"train_loss": float(loss.detach())}
    metrics.update(client_metrics(context, len(y), labels=y, num_classes=CLASSES))
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def federated_evaluate(msg: Message, context: Context) -> Message:
    model = new_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = _data(context)
    loss, accuracy = evaluate(model, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
