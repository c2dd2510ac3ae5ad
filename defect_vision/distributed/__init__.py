"""Past one machine: batch prediction on a Ray cluster (Ray Data; `predict --engine ray`), resumable shards merged
into the single-process outputs, and the pixel metrics of sharded predictions merged exactly. `import ray` happens
only when a cluster is used, so the package imports without the optional extra `[distributed]`."""
