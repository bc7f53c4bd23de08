"""``napari-rat bench sga``: the package's dense SGA against the exact and local layers.

For every size, the first grouping layer alone and the whole backbone forward (inference) run
with each implementation, every case in its own child process (time and peak memory, see
:mod:`napari_rat.bench._measure`); the ratios against the package are from the same run. All
cases of a size share one set of weights and one input, so the outputs are compared too (the
exact layer must agree with the package; the local layer is a different, windowed attention).
Cases whose dense attention (``N_q x N_k x heads x 4`` bytes) exceeds ``--max-memory-gb`` are
skipped for the package, and exact cases above ``--max-exact-work`` attention entries (its time
is quadratic) are skipped too.

Timings are wall-clock: on a shared machine, other processes' load slows the many small
parallel operations of the tiled layers far more than the package's few huge ones (the header
and footer give the load average); ``--repeat`` keeps the fastest of several runs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_rat.bench._measure import format_bytes, measure

MODES = ("package", "exact", "local")
DEFAULT_SIZES = {2: (64, 128, 256, 512, 1024), 3: (16, 32, 64, 128)}
QUICK_SIZES = {2: (16, 24), 3: (8,)}
DEFAULT_CONFIG = {"feature_dims": 128, "num_heads": 16, "num_blocks": 4, "kernel": 7, "stride": 3}
QUICK_CONFIG = {"feature_dims": 32, "num_heads": 4, "num_blocks": 2, "kernel": 5, "stride": 2}
#: Output tokens returned by a layer case for the comparison (a fixed prefix).
_COMPARE_TOKENS = 1024


# ------------------------------------------------------------------ set-up (runs in the child)
def _layer_kwargs(dims: int, config: dict[str, int]) -> dict[str, Any]:
    return {
        "feature_dims": config["feature_dims"],
        "num_heads": config["num_heads"],
        "spatial_dims": dims,
        "kernel_size": config["kernel"],
        "stride": config["stride"],
    }


def _rat_kwargs(dims: int, config: dict[str, int]) -> dict[str, Any]:
    return {
        "spatial_dims": dims,
        "input_features": 1,
        "feature_dims": config["feature_dims"],
        "num_heads": config["num_heads"],
        "num_blocks": config["num_blocks"],
        "sga_kernel_size": config["kernel"],
        "stride": config["stride"],
    }


def _prepare(device: str, threads: int | None, seed: int):
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch


def _input(torch, shape, seed: int):
    # its own generator: the models built before it draw different amounts of randomness
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1))


def setup_layer(mode: str, dims: int, size: int, config: dict, device: str, threads, seed: int):
    """Child set-up: the first grouping layer on a ``size``-sided input: ``(run, device)``."""
    torch = _prepare(device, threads, seed)
    from spatial_grouping_attention import DenseSpatialGroupingAttention

    from napari_rat.model.fast_sga import ExactSGA, LocalSGA

    kwargs = _layer_kwargs(dims, config)
    weights = DenseSpatialGroupingAttention(**kwargs).state_dict()
    cls = {"package": DenseSpatialGroupingAttention, "exact": ExactSGA, "local": LocalSGA}[mode]
    layer = cls(**kwargs)
    layer.load_state_dict(weights)
    layer = layer.eval().to(device)
    grid = (size,) * dims
    x = _input(torch, (1, math.prod(grid), config["feature_dims"]), seed).to(device)
    spacing = (1.0,) * dims
    extra = {} if mode == "package" else {"return_maps": False}

    def run():
        with torch.no_grad():
            out = layer(x, spacing, grid, **extra)["x_out"]
        return out[:, :_COMPARE_TOKENS].float().cpu().numpy()  # numpy: plain pickling

    return run, device


def setup_rat(mode: str, dims: int, size: int, config: dict, device: str, threads, seed: int):
    """Child set-up: a whole backbone forward (inference); returns ``(run, device)``."""
    torch = _prepare(device, threads, seed)
    from napari_rat.model import ResolutionAwareTransformer

    kwargs = _rat_kwargs(dims, config)
    weights = ResolutionAwareTransformer(**kwargs).state_dict()
    if mode == "package":
        try:
            from resolution_aware_transformer import ResolutionAwareTransformer as Reference
        except ImportError:  # the reference is a dev extra; the same maths through our class
            model = ResolutionAwareTransformer(**kwargs, sga_attention_type="dense")
        else:
            model = Reference(**kwargs)  # computes the composed maps, as it always does
    else:
        model = ResolutionAwareTransformer(
            **kwargs, sga_attention_type=mode, return_attention_maps=False
        )
    model.load_state_dict(weights)
    model = model.eval().to(device)
    x = _input(torch, (1, 1, *(size,) * dims), seed).to(device)

    def run():
        with torch.no_grad():
            out = model(x, (1.0,) * dims)
        return out[0]["x_out"].float().cpu().numpy()

    return run, device


# ------------------------------------------------------------------ planning and reporting
@dataclass
class Case:
    what: str  # "layer" or "rat"
    mode: str
    dims: int
    size: int
    skip: str | None = None
    seconds: float | None = None
    peak: int | None = None
    error: str | None = None
    diff: float | None = None
    result: Any = field(default=None, repr=False)

    @property
    def pixels(self) -> int:
        return self.size**self.dims


def _first_layer_sizes(dims: int, size: int, config: dict) -> tuple[int, int]:
    k, s = config["kernel"], config["stride"]
    n_out = (size + 2 * ((k - 1) // 2) - k) // s + 1
    return n_out**dims, size**dims


def plan_cases(args: argparse.Namespace, config: dict) -> list[Case]:
    """The cases to run, with the reason for any skipped one."""
    sizes = parse_sizes(args.sizes, args.dims, QUICK_SIZES if args.quick else DEFAULT_SIZES)
    whats = ("layer", "rat") if args.what == "both" else (args.what,)
    cases = []
    for dims in args.dims:
        for size in sizes[dims]:
            n_q, n_k = _first_layer_sizes(dims, size, config)
            entries = n_q * n_k * config["num_heads"]
            for what in whats:
                for mode in args.modes:
                    skip = None
                    if mode == "package" and entries * 4 > args.max_memory_gb * 1024**3:
                        skip = f"dense attention {format_bytes(entries * 4)} > --max-memory-gb"
                    elif mode == "exact" and entries > args.max_exact_work:
                        skip = f"{entries:.2g} attention entries > --max-exact-work"
                    cases.append(Case(what, mode, dims, size, skip=skip))
    return cases


def parse_sizes(tokens, dims, defaults) -> dict[int, list[int]]:
    """``["64", "3d:16,32"]`` → sizes per dimensionality (plain numbers apply to all ``dims``)."""
    if not tokens:
        return {d: list(defaults[d]) for d in dims}
    out: dict[int, list[int]] = {d: [] for d in dims}
    for token in tokens:
        token = token.strip().lower()
        target = list(dims)
        if ":" in token:  # "3d:16,32": the prefix applies to the whole list
            prefix, token = token.split(":", 1)
            if prefix not in ("1d", "2d", "3d"):
                raise ValueError(f"size {prefix}:{token}: expected a number or 2d:N / 3d:N")
            target = [int(prefix[0])]
        for value in filter(None, (v.strip() for v in token.split(","))):
            for d in target:
                if d in out:
                    out[d].append(int(value))
    return out


def _fmt_seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f}"


def _ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.1f}x"


def format_table(cases: list[Case]) -> str:
    """Markdown table of the measured cases (ratios: package / this mode)."""
    head = (
        "| case | dims | size | mode | time (s) | peak memory | speed-up vs package "
        "| memory vs package | pixels/s | max abs diff vs package | note |"
    )
    lines = [head, "|" + "---|" * 11]
    baseline = {
        (c.what, c.dims, c.size): c for c in cases if c.mode == "package" and c.seconds is not None
    }
    for c in cases:
        base = baseline.get((c.what, c.dims, c.size))
        speed = memory = "-"
        if base is not None and c.mode != "package" and c.seconds is not None:
            speed, memory = _ratio(base.seconds, c.seconds), _ratio(base.peak, c.peak)
        rate = f"{c.pixels / c.seconds:,.0f}" if c.seconds else "-"
        diff = "-" if c.diff is None else f"{c.diff:.2e}"
        note = c.skip or (c.error.strip().splitlines()[-1][:80] if c.error else "")
        if c.mode == "local" and c.diff is not None:
            note = note or "windowed: differs by design"
        lines.append(
            f"| {c.what} | {c.dims}D | {c.size} | {c.mode} | {_fmt_seconds(c.seconds)} "
            f"| {format_bytes(c.peak)} | {speed} | {memory} | {rate} | {diff} | {note} |"
        )
    return "\n".join(lines)


def _measure_case(case: Case, args: argparse.Namespace, config: dict):
    """The fastest of ``--repeat`` runs, each in a fresh child process."""
    best = None
    for _ in range(max(1, args.repeat)):
        res = measure(
            f"{__name__}:setup_{case.what}",
            timeout=args.timeout,
            mode=case.mode,
            dims=case.dims,
            size=case.size,
            config=config,
            device=args.device,
            threads=args.threads,
            seed=args.seed,
        )
        if res.error:
            return res
        if best is None or res.seconds < best.seconds:
            best = res
    return best


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "load average unknown"


def _run(args: argparse.Namespace) -> int:
    config = dict(QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    try:
        cases = plan_cases(args, config)
    except ValueError as exc:
        from napari_rat.errors import CommandError

        raise CommandError(str(exc)) from None
    import torch

    threads = args.threads or torch.get_num_threads()
    header = (
        f"napari-rat bench sga: torch {torch.__version__}, device {args.device}, "
        f"{threads} threads, {os.cpu_count()} CPUs, fastest of {max(1, args.repeat)} run(s); "
        f"config {config}; peak memory above the process's set-up; {_load()} at start"
    )
    print(header, flush=True)
    baseline: dict[tuple, Case] = {}
    for case in cases:
        if case.skip:
            print(f"  skip {case.what} {case.dims}D {case.size} {case.mode}: {case.skip}")
            continue
        res = _measure_case(case, args, config)
        case.seconds, case.peak, case.error = res.seconds, res.peak_bytes, res.error
        case.result = res.result
        key = (case.what, case.dims, case.size)
        if case.mode == "package" and res.result is not None:
            baseline[key] = case
        elif key in baseline and res.result is not None:
            ref = baseline[key].result
            if ref.shape == res.result.shape:
                case.diff = float(abs(ref - res.result).max())
        status = case.error.strip().splitlines()[-1] if case.error else ""
        print(
            f"  {case.what} {case.dims}D {case.size} {case.mode}: "
            f"{_fmt_seconds(case.seconds)} s, {format_bytes(case.peak)} {status}",
            flush=True,
        )
        if args.free_results and case.mode != "package":
            case.result = None
    table = format_table(cases) + f"\n\n({_load()} at the end)"
    print()
    print(table)
    if args.output:
        Path(args.output).write_text(f"{header}\n\n{table}\n")
        print(f"\nwritten to {args.output}", file=sys.stderr)
    return 1 if any(c.error for c in cases) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sga",
        help="spatial grouping attention: package dense vs exact vs local, layer and whole RAT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        metavar="N",
        help="side lengths, e.g. 64 128 or 2d:256 3d:32 (plain numbers apply to every --dims); "
        "default 2D 64..1024, 3D 16..128",
    )
    parser.add_argument("--dims", nargs="+", type=int, choices=(2, 3), default=[2, 3])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--what", choices=("layer", "rat", "both"), default="both",
        help="the first grouping layer alone, the whole backbone forward, or both",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run: tiny sizes and a small model (32 features, 4 heads, 2 blocks)",
    )  # fmt: skip
    parser.add_argument(
        "--max-memory-gb", type=float, default=12.0,
        help="skip package cases whose dense attention would exceed this (default 12)",
    )  # fmt: skip
    parser.add_argument(
        "--max-exact-work", type=float, default=2e10,
        help="skip exact cases above this many attention entries N_q*N_k*heads (default 2e10)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per case")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="run each case this many times (each in a fresh process) and keep the fastest",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    parser.add_argument("--free-results", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=_run)
