"""A local Ray cluster whose nodes pose as the hosts of multi-host TPU slices.

Each node is a real raylet on this machine declaring what a TPU VM declares
to Ray: its chips (`TPU: 4`), the accelerator type, the node labels
`ray.io/tpu-slice-name`, `-worker-id`, `-pod-type` and `-topology`, and on
worker 0 the slice's head resource `TPU-<pod type>-head: 1`. Ray's TPU code
reads a host's slice name and worker id from the TPU_NAME and TPU_WORKER_ID
variables (as on GKE), so each raylet is started with them and its workers
inherit them. Nothing else is simulated: the trainers the hosts run are
CPU processes.

    with tpu_slices(["slice-a", "slice-b"], topology="2x2x2", version="v4") as cluster:
        ray.init(address=cluster.address)
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

CHIPS_PER_HOST = 4


@contextlib.contextmanager
def tpu_slices(
    names: Sequence[str], *, topology: str = "2x2x2", version: str = "v4", cpus_per_host: int = 1
) -> Iterator[object]:
    """Starts a cluster (a head with no CPUs for the gang tasks to hold, and
    each slice's hosts) and yields it; shuts it down on exit."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util import tpu

    keys = ray._raylet
    accelerator_type = "TPU-" + version.upper()
    hosts, _ = tpu.get_tpu_worker_resources(topology, version)
    pod_type = tpu.infer_tpu_pod_type_from_topology(topology, accelerator_type)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    saved = {k: os.environ.get(k) for k in ("TPU_NAME", "TPU_WORKER_ID")}
    try:
        for name in names:
            for worker in range(hosts):
                resources = {"TPU": CHIPS_PER_HOST, f"accelerator_type:{accelerator_type}": 1}
                if worker == 0:
                    resources[f"TPU-{pod_type}-head"] = 1
                os.environ.update(TPU_NAME=name, TPU_WORKER_ID=str(worker))
                cluster.add_node(
                    num_cpus=cpus_per_host,
                    resources=resources,
                    labels={
                        keys.RAY_NODE_TPU_SLICE_NAME_KEY: name,
                        keys.RAY_NODE_TPU_WORKER_ID_KEY: str(worker),
                        keys.RAY_NODE_TPU_POD_TYPE_KEY: pod_type,
                        keys.RAY_NODE_TPU_TOPOLOGY_KEY: topology,
                        keys.RAY_NODE_ACCELERATOR_TYPE_KEY: accelerator_type,
                    },
                )
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.update({k: v})
        cluster.shutdown()
