"""renalflow orchestration: Prefect flows over `tasks/`, Dask task runners, and the CLI."""
