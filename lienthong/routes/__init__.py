"""Routes: a source, a mapping, enrichers, a gate, a signer and a sink, run as one Airflow DAG."""
