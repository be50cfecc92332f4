"""Side-by-side benchmark of Stratus and the reference registry (`python -m bench`).

Both registries run on loopback over fresh filesystem directories and are driven
by the same client code (bench.client) and the same external load generator
(wrk), so the ratios in the report compare servers, not clients.
"""
