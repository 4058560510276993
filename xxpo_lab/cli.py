"""Command line: `python -m xxpo_lab train | compare | losses` (`--help` on each).

Every Config field is an option (`--lr 3e-4`, `--eps-high 0.28`, `--dynamic-sampling`), documented by
the field's own docstring. Bad values stop at once with the field, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import fields, replace
from pathlib import Path

from xxpo_lab.config import Config, ConfigError, field_docs

PLOT_METRICS = ("eval/accuracy", "reward/mean", "len/mean", "clip/active_frac", "kl/k3", "entropy/mean")


# -------------------------------------------------------------------------------------------------
# Config fields as options


def _converter(annotation: str):
    """int, float, str, bool or an optional one, from the field's annotation."""
    hint = typing.get_type_hints(Config)[annotation]
    args = typing.get_args(hint)
    optional = type(None) in args and (isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union)
    base = next(a for a in args if a is not type(None)) if optional else hint

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        return base(text)

    convert.__name__ = base.__name__ + (" or none" if optional else "")
    return base, convert


def add_config_options(parser: argparse.ArgumentParser, skip=()) -> None:
    docs = field_docs()
    group = parser.add_argument_group("run configuration (xxpo_lab.Config; defaults in brackets)")
    for f in fields(Config):
        if f.name in skip:
            continue
        dashed = f"--{f.name.replace('_', '-')}"
        names = [dashed] + ([f"--{f.name}"] if "_" in f.name else [])  # --eps-high and --eps_high
        base, convert = _converter(f.name)
        if base is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{docs[f.name]} [{f.default}]")
        else:
            group.add_argument(*names, dest=f.name, type=convert, default=None, metavar=f.name.upper(),
                               help=f"{docs[f.name]} [{f.default}]")


def config_from_args(args: argparse.Namespace, **extra) -> Config:
    values = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}
    return Config(**(values | extra))


# -------------------------------------------------------------------------------------------------
# commands


def cmd_losses(args) -> int:
    from xxpo_lab.advantages import ADVANTAGES
    from xxpo_lab.losses import LOSSES

    width = max(map(len, LOSSES))
    print("losses (Config.loss), with their default advantage:")
    for name, spec in LOSSES.items():
        print(f"  {name:<{width}}  {spec.summary}  [adv: {spec.defaults.get('adv', 'grpo')}]")
    print("\nadvantages (Config.adv):")
    for name, fn in ADVANTAGES.items():
        print(f"  {name:<{width}}  {fn.__doc__.strip().splitlines()[0]}")
    return 0


def cmd_train(args) -> int:
    from xxpo_lab import plots
    from xxpo_lab.runs import train

    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{cfg.loss}-{cfg.task}-seed{cfg.seed}")
    out.mkdir(parents=True, exist_ok=True)
    hist = train(cfg, progress=not args.no_progress, cache=not args.no_cache, device=args.device,
                 checkpoint_dir=out if args.checkpoint_every else None, checkpoint_every=args.checkpoint_every)
    _write_table(hist, out / f"metrics.{args.format}")
    (out / "config.json").write_text(json.dumps(hist.attrs, indent=2, default=str))
    plots.style()
    plots.curves(hist, [m for m in PLOT_METRICS if m in hist], smooth=5).savefig(out / "curves.png")
    ev = hist["eval/accuracy"].dropna()
    warm = hist.attrs["warm_start"]
    print(f"{hist.attrs['config']['loss']} on {hist.attrs['config']['task']}: held-out accuracy "
          f"{ev.iloc[0]:.3f} (warm start) -> {ev.iloc[-1]:.3f} after {len(hist) - 1} steps; "
          f"{1000 * hist['time/step'].median():.0f} ms/step; warm start {warm['steps']} steps")
    print(f"wrote {out}/metrics.{args.format}, config.json, curves.png")
    return 0


def cmd_compare(args) -> int:
    from xxpo_lab import plots
    from xxpo_lab.runs import compare

    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    base = config_from_args(args)
    configs = {name: replace(base, loss=name) for name in losses}  # validates each loss name
    out = Path(args.out or f"runs/compare-{'-'.join(losses)}-{base.task}")
    out.mkdir(parents=True, exist_ok=True)
    table = compare(configs, seeds=seeds, workers=args.workers, progress=not args.no_progress)
    _write_table(table, out / f"metrics.{args.format}")
    summary = summarize(table)
    summary.to_csv(out / "summary.csv")
    (out / "configs.json").write_text(json.dumps(table.attrs, indent=2, default=str))
    plots.style()
    metrics = [m for m in PLOT_METRICS + tuple(args.metric) if m in table]
    plots.curves(table, metrics, smooth=5).savefig(out / "comparison.png")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out}/metrics.{args.format}, summary.csv, comparison.png")
    return 0


def summarize(table):
    """Per run: held-out accuracy at the start, at the end and its mean over training, and the time per step;
    mean and standard deviation over seeds (`tables.summary`, one row per run and seed, averaged)."""
    from xxpo_lab.tables import summary

    per_seed = summary(table).set_index("run")[["start", "end", "mean", "step_ms"]]
    out = per_seed.groupby("run", sort=False).agg(["mean", "std"])
    out.columns = [f"eval/accuracy {a} ({b})" if a != "step_ms" else f"ms per step ({b})" for a, b in out.columns]
    out["seeds"] = per_seed.groupby("run", sort=False).size()
    return out


def _write_table(df, path: Path) -> None:
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


# -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xxpo_lab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("losses", help="list the registered losses and advantages, one line each")
    p.set_defaults(func=cmd_losses)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default=None, help="output folder, created if missing (default: runs/<loss>-<task>-seed<seed> "
                        "for train, runs/compare-<losses>-<task> for compare)")
    common.add_argument("--format", choices=["csv", "parquet"], default="csv", help="format of the metrics table")
    common.add_argument("--no-cache", action="store_true", help="retrain even if this run is in the run cache")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("train", parents=[common], help="train one run; write its metrics, config and plots")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="write OUT/checkpoint.pt every N steps and resume from it when present (0: off)")
    add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", parents=[common], help="run several losses on several seeds; a table and a figure")
    p.add_argument("--losses", required=True, help="comma-separated loss names, e.g. grpo,dr_grpo")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated RL seeds")
    p.add_argument("--workers", type=int, default=None, help="parallel runs (default: 2 on CPU, 1 on CUDA)")
    p.add_argument("--metric", action="append", default=[], help="extra metric to plot (repeatable)")
    add_config_options(p, skip=("loss", "seed"))
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, KeyError) as exc:
        parser.exit(2, f"error: {exc.args[0] if exc.args else exc}\n")
    except ValueError as exc:  # a bad number in --seeds and the like
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
