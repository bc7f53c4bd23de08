"""Training jobs on a Ray cluster: ``submit``, ``jobs``, ``logs``, ``stop``, ``fetch``.

Every command talks to the local head (``napari-rat cluster start``) unless ``--address`` names
a remote cluster's dashboard URL; the token then comes from ``--token-file`` or the environment
variable ``--token-env`` (``RAY_AUTH_TOKEN`` by default), never from the command line.
"""

from __future__ import annotations

import argparse
import datetime


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the cluster is and how to authenticate (shared by the job commands)."""
    parser.add_argument(
        "--address", metavar="URL", help="remote Ray dashboard URL (default: the local head)"
    )
    parser.add_argument("--token-file", metavar="F", help="file holding the cluster's token")
    parser.add_argument(
        "--token-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the token (default: cluster.token_env, RAY_AUTH_TOKEN)",
    )
    parser.add_argument("--ca-file", metavar="F", help="CA bundle for an https dashboard")


def client_from_args(args: argparse.Namespace, token_env: str | None = None):
    """Connect as the arguments say; connection problems become one-line command errors."""
    from napari_rat.cluster import ClusterError, connect
    from napari_rat.errors import CommandError

    try:
        return connect(
            args.address,
            token_file=args.token_file,
            token_env=args.token_env or token_env or "RAY_AUTH_TOKEN",
            ca_file=args.ca_file,
        )
    except (ClusterError, ImportError) as exc:
        raise CommandError(str(exc)) from None


def _cluster_errors():
    from napari_rat.cluster import ClusterError
    from napari_rat.cluster.submission import SubmissionError

    return (ClusterError, SubmissionError)


def _submit(args: argparse.Namespace) -> int:
    from napari_rat.commands.train import prepare_config

    args.backend = "ray"  # prepare_config applies it like train --backend ray
    config = prepare_config(args)
    address = args.address or config.cluster.address
    args.address = address
    client = client_from_args(args, token_env=config.cluster.token_env)
    job_id = submit_from_args(client, config, args)
    print(job_id)
    if args.follow:
        return _print_follow(client, job_id)
    return 0


def submit_from_args(client, config, args: argparse.Namespace) -> str:
    """Submit ``config`` with the training options of ``args`` (``--init-from``, ``--resume``,
    ``--num-workers``, ``--num-gpus``); refusals become one-line command errors."""
    from napari_rat.errors import CommandError

    try:
        return client.submit(
            config,
            init_from=args.init_from,
            resume=args.resume,
            num_workers=args.num_workers,
            num_gpus=args.num_gpus,
        )
    except _cluster_errors() as exc:
        raise CommandError(str(exc)) from None


def _print_follow(client, job_id: str) -> int:
    from napari_rat.errors import CommandError

    try:
        for line in client.follow(job_id):
            print(line, flush=True)
        summary = client.job(job_id)
    except _cluster_errors() as exc:
        raise CommandError(str(exc)) from None
    print(f"job {job_id}: {summary.status} {summary.message}".rstrip())
    return 0 if summary.status == "SUCCEEDED" else 1


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _jobs(args: argparse.Namespace) -> int:
    from napari_rat.errors import CommandError

    client = client_from_args(args)
    try:
        summaries = client.jobs()
    except _cluster_errors() as exc:
        raise CommandError(str(exc)) from None
    if not summaries:
        print(f"no napari-rat jobs on {client.url}")
        return 0
    print(f"{'ID':38} {'RUN':16} {'STATUS':10} {'STARTED':19} {'ENDED':19} LATEST")
    for s in summaries:
        latest = " ".join(f"{k} {v:.4g}" for k, v in s.latest.items())
        print(
            f"{s.submission_id:38} {s.run_name:16} {s.status:10} {_when(s.start_time):19} "
            f"{_when(s.end_time):19} {latest}"
        )
        if s.status == "FAILED" and s.message:
            print(f"  {s.message.splitlines()[0]}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from napari_rat.errors import CommandError

    client = client_from_args(args)
    if args.follow:
        return _print_follow(client, args.job_id)
    try:
        print(client.logs(args.job_id), end="")
    except _cluster_errors() as exc:
        raise CommandError(str(exc)) from None
    return 0


def _stop(args: argparse.Namespace) -> int:
    from napari_rat.errors import CommandError

    client = client_from_args(args)
    try:
        stopped = client.stop(args.job_id)
    except _cluster_errors() as exc:
        raise CommandError(str(exc)) from None
    if stopped:
        print(f"stopping {args.job_id}; its checkpoints stay in storage (submit --resume)")
    else:
        print(f"{args.job_id} had already ended")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from napari_rat.errors import CommandError

    client = client_from_args(args)
    try:
        path = client.fetch(args.job_id, args.output)
    except _cluster_errors() as exc:
        raise CommandError(str(exc)) from None
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit``, ``jobs``, ``logs``, ``stop`` and ``fetch``."""
    from napari_rat.commands.train import add_training_arguments

    submit = subparsers.add_parser("submit", help="submit a training config as a Ray job")
    add_training_arguments(submit, backend=False)
    add_cluster_arguments(submit)
    submit.add_argument("--follow", action="store_true", help="print the log until the job ends")
    submit.set_defaults(func=_submit)

    jobs = subparsers.add_parser("jobs", help="list napari-rat's jobs with their latest metrics")
    add_cluster_arguments(jobs)
    jobs.set_defaults(func=_jobs)

    logs = subparsers.add_parser("logs", help="print a job's log")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    add_cluster_arguments(logs)
    logs.set_defaults(func=_logs)

    stop = subparsers.add_parser("stop", help="stop a job (resume it with submit --resume)")
    stop.add_argument("job_id", metavar="ID")
    add_cluster_arguments(stop)
    stop.set_defaults(func=_stop)

    fetch = subparsers.add_parser("fetch", help="copy a job's best checkpoint here and check it")
    fetch.add_argument("job_id", metavar="ID")
    fetch.add_argument("--output", default=".", metavar="DIR", help="folder (default: here)")
    add_cluster_arguments(fetch)
    fetch.set_defaults(func=_fetch)
