"""The data-plane benchmarks of clusterip, run in a lab of network namespaces.

`python -m bench` (or `make bench`) builds a lab, measures, tears it down and writes
`docs/benchmarks.md`, its PNG plots, `docs/benchmarks.json` and the raw results in `bench/out/`.
"""
