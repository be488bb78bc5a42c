"""renalflow units of work: plain typed functions with no orchestration import.

A test, a Dask worker or a notebook can call anything here directly; `flows/`
composes these functions into Prefect flows.
"""
