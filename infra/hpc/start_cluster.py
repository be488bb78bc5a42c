"""Start a dask-jobqueue cluster from infra/hpc/jobqueue.yaml and print its address.

    pip install dask-jobqueue
    python infra/hpc/start_cluster.py slurm --jobs 8        # or: pbs, slurm-gpu
    renalflow ingest ARCHIVE --store STORE --dask-address tcp://...

The cluster lives as long as this process; stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system", choices=["slurm", "pbs", "slurm-gpu"])
    parser.add_argument("--jobs", type=int, default=4, help="batch jobs to submit")
    args = parser.parse_args()

    from dask_jobqueue import PBSCluster, SLURMCluster

    if args.system == "pbs":
        cluster = PBSCluster(config_name="pbs")
    elif args.system == "slurm-gpu":
        # One worker per GPU job, advertised as a Dask resource for train and score.
        cluster = SLURMCluster(
            config_name="slurm",
            job_name="renalflow-gpu",
            cores=1,  # one task at a time on the GPU ...
            job_cpu=8,  # ... with the job's 8 cores for TensorFlow and input
            processes=1,
            memory="64GiB",
            walltime="08:00:00",
            job_extra_directives=["--gres=gpu:1"],
            worker_extra_args=["--resources", "GPU=1", "--preload", "renalflow.flows.ingest"],
        )
    else:
        cluster = SLURMCluster(config_name="slurm")
    cluster.scale(jobs=args.jobs)
    print(f"scheduler: {cluster.scheduler_address}")
    print(cluster.job_script())
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()


if __name__ == "__main__":
    main()
