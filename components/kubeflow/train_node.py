"""One node of a multi-node training job: stage the inputs, train under torchrun, hand the run folder back.

    python -m components.kubeflow.train_node --statistics-uri s3://... --dataset-uri s3://... \\
        --output-uri s3://... --nodes N --procs-per-node M -- TRAIN FLAGS

Every node downloads the statistics artifact and the train and validation splits of the dataset
(checked against the fingerprint in ``stats.json``) onto its scratch space, then runs
``torchrun ... -m components train --run RUN --data DATA TRAIN FLAGS`` with the rendezvous its
engine set (:func:`~components.kubeflow.train_jobs.torchrun_command`). Node 0 (where Lightning's
rank 0 writes the checkpoint) then uploads the training artifact's files to ``--output-uri``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the node's flags (the train flags after ``--``), stage the statistics, train; the exit status."""
    from components.kubeflow.steps import scratch_dir
    from components.storage import download_prefix

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="python -m components.kubeflow.train_node")
    for name in ("--statistics-uri", "--dataset-uri", "--output-uri"):
        parser.add_argument(name, required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--procs-per-node", type=int, required=True)
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    inputs = scratch_dir()
    try:
        statistics = download_prefix(args.statistics_uri, inputs / "statistics")
        return _train(args, flags, statistics)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)


def _train(args: argparse.Namespace, flags: Sequence[str], statistics) -> int:
    """Train under torchrun on the staged run folder; node 0 uploads the training files."""
    from components.contracts.run_layout import ARTIFACT_FILES
    from components.kubeflow.steps import SPLITS_READ, staged_run
    from components.kubeflow.train_jobs import torchrun_command
    from components.storage import join_uri, upload_dir, upload_file

    with staged_run(args.dataset_uri, splits=SPLITS_READ["train"], statistics=statistics) as (layout, data):
        command = torchrun_command(os.environ, args.nodes, args.procs_per_node,
                                   ["--run", str(layout.root), "--data", str(data), *flags])
        print("train_node:", " ".join(command), flush=True)
        code = subprocess.call(command)
        if code != 0:
            print(f"train_node: torchrun exited with {code}", file=sys.stderr, flush=True)
            return code
        rank = os.environ.get("PET_NODE_RANK") or os.environ.get("RANK") or "0"
        if rank == "0":
            for entry in ARTIFACT_FILES["training"]:
                path = layout.root / entry.rstrip("/")
                if path.is_dir():
                    upload_dir(path, join_uri(args.output_uri, entry.rstrip("/")))
                else:
                    upload_file(path, join_uri(args.output_uri, entry))
            print(f"train_node: run folder uploaded to {args.output_uri}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
