"""A long-lived ClientApp executor for a SuperNode started with ``--isolation process``.

Flower 1.42 runs every ClientApp message in a fresh process: the SuperNode's SuperExec
(``flower-superexec``, ``flwr.supercore.superexec.run_superexec``) acquires each task from the
SuperNode's Runtime API and launches ``flwr-clientapp --token ...``
(``SubprocessExecutor.launch``), whose ``run_clientapp``
(``flwr.supernode.runtime.run_clientapp``) pulls that one message, replies and exits. Each
message then pays a Python start, the flwr, torch and app imports and the app's own set-up.

This executor takes the SuperExec's place for ClientApp tasks: one process per SuperNode that
acquires the tasks itself and runs each in-process with the same Runtime API calls as
``run_clientapp`` (pull the task input and message, call the ClientApp, push the reply and the
task output with its Context), keeping the imported modules, the installed FAB and the loaded
ClientApp between messages. A ClientApp that caches its set-up per process (driftscope's keeps
its data, model and algorithm) then pays it once per run instead of once per message.

::

    flower-supernode --insecure --isolation process --clientappio-api-address 127.0.0.1:PORT ...
    python -m driftscope.flower.executor --runtime-api-address 127.0.0.1:PORT --parent-pid PID

Only ``--insecure`` Runtime API connections (a loopback SuperNode on the same machine); runtime
dependency installation is not offered (the process runs in its own environment).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from logging import ERROR
from typing import Any

DEFAULT_POLL_S = 0.5


def _task_client(address: str, token: str | None) -> Any:
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [
        RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")
    ]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


class Executor:
    """Acquires ClientApp tasks from one SuperNode and runs them in this process."""

    def __init__(self, runtime_api_address: str, poll_s: float = DEFAULT_POLL_S) -> None:
        self.address = runtime_api_address
        self.poll_s = poll_s
        self.apps: dict[tuple[str, str, str], Any] = {}  # (fab id, version, hash) -> ClientApp
        self.tasks = 0
        self.client = _task_client(runtime_api_address, None)

    def acquire(self) -> str | None:
        """The token of the next pending ClientApp task, or None."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])
        )
        return res.token if res.HasField("task") and res.token else None

    def load(self, run: Any, fab: Any) -> Any:
        """The run's ClientApp: its FAB installed and its app loaded once per process."""
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn

        key = (run.fab_id, run.fab_version, fab.hash_str)
        if key not in self.apps:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[key] = load(*key)
        return self.apps[key]

    def run_task(self, token: str) -> None:
        """One task, as ``flwr.supernode.runtime.run_clientapp`` runs it, without exiting."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore import log
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        client = _task_client(self.address, token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = context = reply = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            client_app = self.load(run, fab)
            reply = client_app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the ClientApp's error goes back as an error reply
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = f"{type(ex)}:<'{ex}'>"
            if isinstance(ex, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                reason = "An exception was raised when attempting to load `ClientApp`"
            log(ERROR, "ClientApp raised an exception", exc_info=ex)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            finally:
                push_task_output(client, context, sub_status, details)
                if heartbeat.is_running:
                    heartbeat.stop()
                client.close()
        self.tasks += 1

    def serve(self, parent_pid: int | None = None) -> None:
        """Run tasks until the SuperNode (``parent_pid``) goes away or a signal ends it.

        After a task the next is asked for soon (the next round's comes within seconds), then
        less and less often, up to every ``poll_s`` seconds
        (:class:`~driftscope.flower.polling.Backoff`)."""
        from driftscope.flower.polling import Backoff

        backoff = Backoff(self.poll_s)
        while parent_pid is None or _alive(parent_pid):
            token = self.acquire()
            if token is None:
                time.sleep(backoff.wait())
            else:
                self.run_task(token)
                backoff.reset()


def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """``flwr.supernode.runtime.run_clientapp.pull_task_input`` with a short retry: an object
    the SuperNode is still storing is asked for again soon, with the retries of
    :func:`~driftscope.flower.polling.quick_object_retries` (0.02 s, doubling up to 0.1 s), not
    Flower's default 1 s, doubling up to 10 s."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
        PullAppMessagesRequest,
        PullTaskInputRequest,
    )
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    from driftscope.flower.polling import OBJECT_RETRIES, OBJECT_RETRY_CAP_S, OBJECT_RETRY_S

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        max_tries_per_object=OBJECT_RETRIES,
        initial_backoff=OBJECT_RETRY_S,
        backoff_cap=OBJECT_RETRY_CAP_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as run_clientapp sets it
    return message, context, run, fab


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m driftscope.flower.executor",
        description="Run a SuperNode's ClientApp tasks in one long-lived process "
        "(the SuperNode started with --isolation process).",
    )
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's "
                   "--clientappio-api-address (host:port)")  # fmt: skip
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) ends")
    p.add_argument("--poll", type=float, default=DEFAULT_POLL_S, help="seconds between polls")
    args = p.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        Executor(args.runtime_api_address, args.poll).serve(args.parent_pid)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
