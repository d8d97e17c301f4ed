"""Clients and deployment for the engines the pipeline runs on: Spark, Ray, Milvus, MLflow.

Code here turns a validated configuration section into a live client (a SparkSession, a Ray
connection, …); every engine import stays inside these modules so the core imports none.
"""
