"""flows/fanout.py: where a running flow can be watched."""

from __future__ import annotations

import re
import urllib.request

from prefect import flow

from renalflow.flows.fanout import run_links
from renalflow.flows.runtime import dask_task_runner


def test_a_flow_on_a_local_cluster_links_its_prefect_run_and_a_live_dask_dashboard(
    prefect_api,
):
    @flow(task_runner=dask_task_runner(workers=1))
    def watched() -> tuple[str, dict[str, str]]:
        from prefect.runtime import flow_run

        links = run_links()
        dashboard = links.get("Dask dashboard", "")
        # The dashboard answers while the flow runs, on loopback only.
        assert re.match(r"http://127\.0\.0\.1:\d+/status$", dashboard), links
        with urllib.request.urlopen(dashboard, timeout=30) as page:
            assert page.status == 200
        return str(flow_run.id), links

    run_id, links = watched()
    base = prefect_api.removesuffix("/api")
    assert links["Prefect run"] == f"{base}/runs/flow-run/{run_id}"
