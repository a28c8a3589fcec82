"""A local stand-in of an Azure ML workspace: the course's Azure path, rehearsed offline ("dry run").

:class:`Workspace` answers the calls the notebooks make on an ``MLClient`` — ``compute``, ``data``,
``jobs``, ``models``, ``online_endpoints``, ``online_deployments`` — with the same signatures and the
same azure-ai-ml entity types, and does on this machine what Azure ML does with each entity:

- every entity is validated by azure-ai-ml itself (schema validation, REST conversion, loader round trip);
- a command job runs its exact command on a snapshot of its ``code`` folder (:mod:`.jobs`), with MLflow pointed at
  a tracking server that answers as Azure ML's does (:mod:`.tracking`: 404 on MLflow 3's logged models), under an
  import guard (:mod:`.guard`) that allows only the standard library and the distributions the job's environment
  installs (its conda pip list and what they require): an import the environment would not satisfy on Azure
  fails here too, naming the package and the fix;
- data assets and registered models are copied into the workspace's datastore (:mod:`.assets`); the model
  catalog answers for the models it knows, with the retirement tags the real assets carry, and hands a job a shrunk
  random copy of a Phi model's architecture where Azure would hand it the weights (:mod:`.assets`);
  clusters are entities with canned sizes and quota, which ``COURSE_REHEARSAL_QUOTA`` can set (:mod:`.compute`);
- a deployment serves its ``code_configuration`` scoring script as the inference image starts it (``azmlinfsrv``:
  ``WORKER_COUNT`` sync workers, one request at a time each; :mod:`.endpoints`), with ``AZUREML_MODEL_DIR`` laid out
  as Azure lays out the model, behind a gateway that does what Azure's does (:mod:`.gateway`): the endpoint's key
  (401), ``request_settings``' limit on requests in flight (429) and timeout (408).

What it cannot check is ``azure.REHEARSAL_LIMITS``: your real quota, regional capacity, the image build, the GPU,
real latency. ``python -m phi3course.rehearsal stop <folder>`` stops what a stand-in started; ``run-job <folder>`` is
the supervisor a job runs under; ``tracking-server <store> <artifacts>`` serves the workspace's MLflow alone;
``gateway <settings file>`` is a deployment's gateway.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..azure import EXAMPLE_SETTINGS
from .common import Poller, RehearsalError
from .guard import allowed_distributions, module_owners
from .jobs import run_job
from .workspace import Workspace, stop

__all__ = [
    "EXAMPLE_SETTINGS",
    "Poller",
    "RehearsalError",
    "Workspace",
    "allowed_distributions",
    "main",
    "module_owners",
    "run_job",
    "stop",
]


def main(argv: list[str] | None = None) -> int:
    """``python -m phi3course.rehearsal run-job <job folder> | stop <rehearsal folder>
    | tracking-server <store URI> <artifact root> | gateway <gateway settings file>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "tracking-server":
        from .tracking import serve

        return serve(args[1], args[2])
    if len(args) == 2 and args[0] == "run-job":
        with contextlib.suppress(KeyboardInterrupt):
            return run_job(Path(args[1]))
        return 1
    if len(args) == 2 and args[0] == "gateway":
        from .gateway import serve as serve_gateway

        with contextlib.suppress(KeyboardInterrupt):
            return serve_gateway(args[1])
        return 1
    if len(args) == 2 and args[0] == "stop":
        for what in stop(args[1]):
            print(f"stopped {what}")
        return 0
    print(
        "usage: python -m phi3course.rehearsal run-job <job folder> | stop <rehearsal folder>"
        " | tracking-server <store URI> <artifact root> | gateway <gateway settings file>",
        file=sys.stderr,
    )
    return 2
