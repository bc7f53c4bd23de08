"""``napari-rat submit-predict IN.zarr --output OUT.zarr``: ``predict --cluster`` as a Ray job.

The job runs ``napari-rat predict ... --cluster auto`` on the cluster it is sent to (the local
head, or ``--address`` with a token as for ``submit``), with the same package pinned and the
checkpoint in the job's upload. The image and the output must be where the cluster reads and
writes them (an ``s3://`` URL or a shared folder); open the output in napari when the job is done.
"""

from __future__ import annotations

import argparse

#: Options of ``submit-predict`` that are not passed on to the job's ``predict`` as they are.
_OWN = {"input", "output", "checkpoint", "follow", "address", "token_file", "token_env", "ca_file"}


def predict_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The ``predict`` options of ``args`` that differ from their defaults, spelled again."""
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in _OWN or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            out.append(flag)
        elif isinstance(value, list):
            out += [flag, *(_spell(v) for v in value)]
        else:
            out += [flag, _spell(value)]
    return out


def _spell(value) -> str:
    if isinstance(value, tuple):  # a --region: (axis, (start, stop))
        axis, (start, stop) = value
        return f"{axis}={start}:{stop}"
    return str(value)


def _run(args: argparse.Namespace) -> int:
    from napari_rat.cluster import ClusterError
    from napari_rat.cluster.submission import SubmissionError
    from napari_rat.commands.jobs import _print_follow, client_from_args
    from napari_rat.errors import CommandError

    client = client_from_args(args)
    try:
        job_id = client.submit_predict(
            args.input,
            args.output,
            checkpoint=args.checkpoint,
            predict_args=predict_arguments(args.parser, args),
        )
    except (ClusterError, SubmissionError) as exc:
        raise CommandError(str(exc)) from None
    print(job_id)
    if args.follow:
        return _print_follow(client, job_id)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_rat.commands.jobs import add_cluster_arguments
    from napari_rat.commands.predict import add_cluster_run_arguments, add_prediction_arguments

    p = subparsers.add_parser(
        "submit-predict", help="predict across a Ray cluster as a job (predict --cluster)"
    )
    p.add_argument("input", metavar="IN.zarr", help="OME-Zarr image the cluster reads (URL/path)")
    p.add_argument(
        "--output",
        required=True,
        metavar="OUT.zarr",
        help="where the cluster writes the results (an absolute path on storage it shares)",
    )
    add_prediction_arguments(p)
    add_cluster_run_arguments(p, cluster=False)
    add_cluster_arguments(p)
    p.add_argument("--follow", action="store_true", help="print the log until the job ends")
    p.set_defaults(func=_run, parser=p)
