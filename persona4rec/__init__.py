"""Persona4Rec: offline LLM reasoning into a persona-profiled item index, explainable scoring online.

This core package holds what every part shares (configuration, table schemas, manifests, the CLI) and
imports no engine: Spark, Ray, Milvus, MLflow and the LLMs live behind the stage packages
(`persona4rec.jobs`, `persona4rec.ray_actors`, `persona4rec.encoder`, `persona4rec.infra`).
"""

__version__ = "0.1.0"
