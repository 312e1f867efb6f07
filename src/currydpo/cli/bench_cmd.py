"""`currydpo bench`: currydpo vs TRL's DPOTrainer, same machine, model and data (see currydpo.experiments.bench)."""

from __future__ import annotations


def add_parser(sub):
    from ..experiments import bench

    p = sub.add_parser("bench", help="benchmark currydpo against TRL's DPOTrainer",
                       description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(p)
    return p


def run(args) -> int:
    from ..experiments import bench

    return bench.run_args(args)
