"""The edges: sources pull batches with a cursor, enrichers look records up, sinks push and ack.

Each connector is built from an Airflow connection id (like a provider hook), so the same object
serves a DAG task, the CLI and a test.
"""
