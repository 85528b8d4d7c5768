"""Command line: `python -m streamflow_mlops <command> --help`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from streamflow_mlops.config.settings import get_settings


def _generate(args: argparse.Namespace) -> None:
    from streamflow_mlops.synthetic.generate import (
        BREAKAGES,
        NO_DRIFT,
        Drift,
        DropSpec,
        default_drift,
        find_contact_list,
        reached_users,
        read_contact_list,
        write_drop,
    )

    out = Path(args.out) if args.out else get_settings().drops_dir

    def drift_of(month: int) -> Drift:
        drift = default_drift(month) if args.drift == "default" else NO_DRIFT
        overrides = (
            ("fee_rise", args.fee_rise),
            ("usage_drop", args.usage_drop),
            ("rebuffer_factor", args.rebuffer_factor),
        )
        return replace(drift, **{k: v for k, v in overrides if v is not None})

    for month in range(args.start, args.start + args.months):
        drift = drift_of(month)
        spec = DropSpec(
            month=month,
            users=args.users,
            seed=args.seed,
            drift=drift,
            broken=args.broken,
            label_lag=args.label_lag,
            treatment_effect=args.treatment_effect or 0.0,
        )
        spec = replace(spec, labelled_drift=drift_of(spec.labelled_month))
        started = time.perf_counter()
        reached, note = None, ""
        if args.treatment_effect is not None:
            contact_list = (
                Path(args.contact_list)
                if args.contact_list
                else find_contact_list(get_settings().state_dir / "scores", month - 1)
            )
            reached = reached_users(read_contact_list(contact_list), args.reach, args.seed, month)
            note = f", treatment effect {args.treatment_effect} on {len(reached):,} users reached from {contact_list}"
        folder = write_drop(spec, out, Path(args.telco) if args.telco else None, reached)
        note += f", broken: {BREAKAGES[args.broken]}" if args.broken else ""
        drifted = "" if drift == Drift() else f", drift {drift}"
        if args.label_lag:
            note += f", labels as_of {spec.labels_as_of}"
        print(
            f"{folder}: {args.users:,} users, as_of {spec.as_of}{drifted}{note} ({time.perf_counter() - started:.1f}s)"
        )


def _stack(args: argparse.Namespace) -> None:
    from streamflow_mlops.platform.embedded import stop_embedded, up

    settings = get_settings()
    if args.action == "up":
        url = up(settings)
        print(f"postgres: {url}\nenv file: {settings.state_dir / 'env'} (source it)")
    elif args.action == "down":
        stop_embedded(settings)
        print("embedded postgres stopped")


def _demo(args: argparse.Namespace) -> None:
    from streamflow_mlops.platform.demo import run

    run(get_settings(), serve_forever=not args.no_serve)


def _expectations(args: argparse.Namespace) -> None:
    from streamflow_mlops.data.validation import write_suites

    out = Path(args.out) if args.out else get_settings().expectations_dir
    for path in write_suites(out):
        print(f"wrote {path}")


def _bento(args: argparse.Namespace) -> None:
    from streamflow_mlops.platform.bento import build_bento

    bento = build_bento(get_settings())
    dockerfile = Path(bento.path) / "env" / "docker" / "Dockerfile"
    print(f"built bento {bento.tag} at {bento.path}")
    print(f"  models: {', '.join(str(m.tag) for m in bento.info.all_models)}")
    print(f"  Dockerfile: {dockerfile}{'' if dockerfile.exists() else ' (missing)'}")
    print(f"  serve: bentoml serve {bento.tag}   image: bentoml containerize {bento.tag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamflow_mlops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write seeded monthly drops (month_NNN folders)")
    gen.add_argument("--out", help="drops folder (default: $STREAMFLOW_DROPS_DIR or data/drops)")
    gen.add_argument("--months", type=int, default=2, help="how many months to write (default 2)")
    gen.add_argument("--start", type=int, default=0, help="first month index (default 0)")
    gen.add_argument("--users", type=int, default=7043, help="users per month (default 7043)")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--telco", help="calibrate profile columns on the IBM Telco churn CSV at this path")
    gen.add_argument(
        "--drift",
        choices=("default", "none"),
        default="default",
        help="default: month_001 drifted, others not; none: no month drifted",
    )
    gen.add_argument("--fee-rise", type=float, help="override: relative fee rise, e.g. 0.15")
    gen.add_argument("--usage-drop", type=float, help="override: relative usage drop, e.g. 0.3")
    gen.add_argument("--rebuffer-factor", type=float, help="override: rebuffering multiplier, e.g. 2")
    gen.add_argument(
        "--label-lag",
        type=int,
        default=0,
        choices=(0, 1),
        help="1: each month's labels.csv holds the previous month's outcomes (manifest labels_as_of); default 0",
    )
    gen.add_argument(
        "--treatment-effect",
        type=float,
        help="simulate last month's campaign: each reached user of the previous month's contact list has their "
        "churn probability multiplied by 1 - this (e.g. 0.3); writes contacts.csv",
    )
    gen.add_argument(
        "--contact-list",
        help="the contact list to use (default: the newest <state>/scores/<previous month>_top<k>.csv)",
    )
    gen.add_argument("--reach", type=float, default=1.0, help="share of the contact list actually reached (default 1)")
    gen.add_argument(
        "--broken",
        help="write a deliberately broken batch: negative_fee, unknown_net_service, "
        "duplicate_users, missing_column, orphan_keys, bad_label, non_numeric, empty_labels",
    )
    gen.set_defaults(func=_generate)

    stack = commands.add_parser("stack", help="start or stop the embedded Postgres and write .streamflow/env")
    stack.add_argument("action", choices=("up", "down"))
    stack.set_defaults(func=_stack)

    demo = commands.add_parser("demo", help="the whole lifecycle through Airflow, then serve (Ctrl-C stops)")
    demo.add_argument("--no-serve", action="store_true", help="exit once the service answered (CI, e2e test)")
    demo.set_defaults(func=_demo)

    suites = commands.add_parser("expectations", help="regenerate the GE suites (expectations/*.json) from the schema")
    suites.add_argument("--out", help="folder (default: expectations/ in the repo)")
    suites.set_defaults(func=_expectations)

    bento = commands.add_parser("bento", help="build the churn service bento with the current champion")
    bento.set_defaults(func=_bento)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
