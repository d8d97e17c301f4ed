"""Pipeline stages, one entry point each, runnable locally or submitted to a cluster.

Each stage reads the versioned output of the stages before it, writes its own versioned output with a
manifest (see `persona4rec.artifacts`), and does no work when its inputs and configuration are unchanged.
"""
