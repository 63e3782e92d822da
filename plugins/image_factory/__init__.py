"""Image Factory: server images built as code, one Airflow DAG per YAML image spec."""
