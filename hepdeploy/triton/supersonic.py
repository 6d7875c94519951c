"""A values override for the SuperSONIC Helm chart (fastmachinelearning/SuperSONIC, chart 0.3.x).

SONIC sites run Triton on Kubernetes with that chart (Envoy in front, KEDA autoscaling). The
override written here mounts a hepdeploy model repository (a PersistentVolumeClaim, an NFS
export, or CVMFS on the nodes), starts the Triton image of the target release with the
arguments CMS uses (the repository path, ONNX Runtime's global thread pool, an exit timeout),
and sets resources and KEDA bounds. Everything else keeps the chart's defaults: Helm merges
the override over ``values.yaml`` (maps key by key; lists and scalars replace), which
:func:`helm_merge` reproduces so a test can validate the result against the chart's schema.

    helm repo add fastml https://fastmachinelearning.org/SuperSONIC/
    helm install sonic fastml/supersonic -n NAMESPACE -f values.yaml
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hepdeploy.errors import BadInputError
from hepdeploy.fsutil import atomic_write_text
from hepdeploy.plan_compat import DEFAULT_SERVER_RELEASE, server_release
from hepdeploy.triton.check import check_repository
from hepdeploy.triton.layout import CONFIG_NAME

Storage = Literal["pvc", "nfs", "cvmfs"]
# The arguments SONIC deployments give tritonserver besides the repository: ONNX Runtime sessions share one
# global thread pool (many models, few cores each), sized to the pod's CPU limit (with the global pool on,
# the backend ignores per-model thread counts), and a stopping pod gets time to finish its requests.
ORT_BACKEND_CONFIG = "--backend-config=onnxruntime,enable-global-threadpool=1"
EXIT_TIMEOUT_S = 60
MOUNT_PATH = "/models"


@dataclass(frozen=True)
class SupersonicOptions:
    storage: Storage = "pvc"
    claim: str | None = None
    nfs_server: str | None = None
    nfs_path: str | None = None
    gpus: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    release: str = DEFAULT_SERVER_RELEASE
    cpu: int = 2
    memory: str = "8G"
    # KEDA scales out above this value of the chart's default metric (queue ms per execution); `hepdeploy
    # profile` measures it at the operating point. None keeps the chart's default (100).
    server_load_threshold: int | None = None


# RFC 1123 DNS subdomain, as Kubernetes requires of a PersistentVolumeClaim's name.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# GPUs one pod can ask for: the largest GPU nodes have 8 (16 leaves room for what may come).
MAX_GPUS_PER_POD = 16


def parse_replicas(text: str) -> tuple[int, int]:
    """``"2"`` or ``"1:4"`` -> (min, max)."""
    low, _, high = str(text).partition(":")
    try:
        bounds = int(low), int(high or low)
    except ValueError as error:
        raise BadInputError(f"--replicas {text!r}: expected N or MIN:MAX, e.g. 1:4") from error
    if bounds[0] < 0 or bounds[1] < max(bounds[0], 1):
        raise BadInputError(f"--replicas {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return bounds


def _repository_mount(repo: Path, options: SupersonicOptions) -> tuple[dict[str, Any], str]:
    """The chart's modelRepository block and the path tritonserver reads the repository from."""
    if options.storage == "pvc":
        if not options.claim:
            raise BadInputError("--storage pvc needs --claim NAME (the PersistentVolumeClaim holding the repository)")
        if not _DNS_SUBDOMAIN.fullmatch(options.claim) or len(options.claim) > 253:
            raise BadInputError(f"--claim {options.claim!r}: not a name Kubernetes takes (RFC 1123: at most 253 "
                                "lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)")
        return {"enabled": True, "mountPath": MOUNT_PATH, "storageType": "pvc",
                "pvc": {"claimName": options.claim}}, MOUNT_PATH
    if options.storage == "nfs":
        if not options.nfs_server or not options.nfs_path:
            raise BadInputError("--storage nfs needs --nfs-server HOST and --nfs-path PATH (the exported repository)")
        return {"enabled": True, "mountPath": MOUNT_PATH, "storageType": "nfs",
                "nfs": {"server": options.nfs_server, "path": options.nfs_path}}, MOUNT_PATH
    if options.storage == "cvmfs":
        where = repo.resolve().as_posix()
        if not where.startswith("/cvmfs/"):
            raise BadInputError(f"{repo}: with --storage cvmfs the repository must be a path under /cvmfs/ "
                                "(as the nodes see it)")
        return {"enabled": True, "mountPath": "/cvmfs", "storageType": "cvmfs"}, where
    raise BadInputError(f"--storage {options.storage!r}: one of pvc, nfs, cvmfs")


def supersonic_values(repo: Path, options: SupersonicOptions) -> dict[str, Any]:
    """The override for the repository at ``repo``."""
    repo = Path(repo)
    if options.storage != "cvmfs":
        if not repo.is_dir():
            raise BadInputError(f"{repo}: model repository folder not found")
        if not any((child / CONFIG_NAME).is_file() for child in repo.iterdir() if child.is_dir()):
            raise BadInputError(f"{repo}: no model folder with a {CONFIG_NAME} (publish with `hepdeploy triton add` "
                                "or `hepdeploy build` first)")
    if options.gpus > MAX_GPUS_PER_POD:
        raise BadInputError(f"--gpus {options.gpus}: no node has that many GPUs for one pod (at most {MAX_GPUS_PER_POD})")
    if options.storage != "cvmfs":
        problems = check_repository(repo, run_models=False)
        if problems:
            raise BadInputError(f"{repo}: the repository fails `hepdeploy triton check` ({len(problems)} problem(s); "
                                f"first: {problems[0].line()}): not deployed")
    release = server_release(options.release)
    mount, repository_path = _repository_mount(repo, options)
    args = " \\\n".join([
        "/opt/tritonserver/bin/tritonserver",
        f"--model-repository={repository_path}",
        ORT_BACKEND_CONFIG,
        f"--backend-config=onnxruntime,intra_op_thread_count={options.cpu}",
        "--backend-config=onnxruntime,inter_op_thread_count=1",
        "--log-verbose=0",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
    ]) + "\n"
    limits: dict[str, Any] = {"cpu": options.cpu, "memory": options.memory}
    if options.gpus > 0:
        limits["nvidia.com/gpu"] = options.gpus
    autoscaled = options.max_replicas > options.min_replicas
    values: dict[str, Any] = {
        "triton": {
            "replicas": max(options.min_replicas, 1),
            "image": f"nvcr.io/nvidia/tritonserver:{release.release}-py3",
            "args": [args],
            "resources": {"limits": dict(limits), "requests": dict(limits)},
            "modelRepository": mount,
        },
        "keda": {
            "enabled": autoscaled,
            "minReplicaCount": options.min_replicas,
            "maxReplicaCount": options.max_replicas,
        },
    }
    if options.server_load_threshold is not None:
        if options.server_load_threshold < 1:
            raise BadInputError(f"--server-load-threshold {options.server_load_threshold}: must be >= 1 (ms)")
        values["serverLoadThreshold"] = options.server_load_threshold
    if autoscaled:  # KEDA scales on the server-load metric, which the chart reads from Prometheus
        values["prometheus"] = {"enabled": True}
    return values


def helm_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values override over chart defaults: maps merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def write_supersonic_values(repo: Path, output: Path, options: SupersonicOptions) -> dict[str, Any]:
    """Write the override as YAML (atomically) and return it."""
    values = supersonic_values(repo, options)
    header = (f"# SuperSONIC values override written by hepdeploy for the model repository {Path(repo)}\n"
              f"# helm install sonic fastml/supersonic -n NAMESPACE -f {Path(output).name}\n")
    atomic_write_text(Path(output), header + yaml.safe_dump(values, sort_keys=False, width=120))
    return values
