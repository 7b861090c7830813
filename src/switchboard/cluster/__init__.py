"""Where replicas run: the adapter between the live fleet and the machines (docs/ray.md).

`base.Cluster` is the interface; `base.LocalCluster` runs engines beside the gateway (embedded mode, the
default); `ray_cluster.RayCluster` runs each replica as a Ray actor pinned to the node the placement policy
chose. Ray is imported only by the `ray_*` modules, so embedded mode and the policies never need it.
"""
