"""`vetset serve`: serve the flows as Prefect deployments (schedules, alert trigger)."""
from __future__ import annotations

import argparse
import json

from pydantic import ValidationError

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command
from .common import parse_value

DEFAULT_FLOWS = "audit,curate-then-train"


def _arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--config", help="YAML file with 'deployments:' (see docs/flows.md); else --flows")
    sp.add_argument("--flows", default=DEFAULT_FLOWS,
                    help=f"flows to serve without a config (default {DEFAULT_FLOWS}; also train, purify)")
    sp.add_argument("--cron", action="append", metavar="FLOW=CRON", help="schedule, e.g. 'audit=0 3 * * *'; repeatable")
    sp.add_argument("--param", action="append", metavar="FLOW.FIELD=VALUE",
                    help="a flow parameter, e.g. audit.data=train.parquet; repeatable")
    sp.add_argument("--no-alert-trigger", action="store_true",
                    help="do not start curate-then-train on an audit alert event")
    sp.add_argument("--limit", type=int, help="most flow runs at once")
    sp.add_argument("--check", action="store_true", help="validate and print the deployments, serve nothing")


def _split(item: str, sep: str, what: str) -> tuple[str, str]:
    key, found, value = item.partition(sep)
    if not found or not key or not value:
        raise VetsetError(f"{what} {item!r}: expected {'FLOW=CRON' if sep == '=' else 'FLOW.FIELD=VALUE'}")
    return key.strip(), value.strip()


def build_config(args: argparse.Namespace):
    from ..serve import DeploymentSpec, ServeConfig, read_config

    if args.config:
        config = read_config(args.config)
    else:
        flows = [f.strip() for f in args.flows.split(",") if f.strip()]
        try:
            config = ServeConfig(deployments=[
                DeploymentSpec(flow=f, on_audit_alert=(f == "curate-then-train" and not args.no_alert_trigger))
                for f in flows])
        except Exception as exc:
            raise VetsetError(f"--flows: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None
    by_flow = {d.flow: d for d in config.deployments}
    for item in args.cron or []:
        flow, expr = _split(item, "=", "--cron")
        if flow not in by_flow:
            raise VetsetError(f"--cron {item!r}: {flow!r} is not among the served flows {', '.join(by_flow)}")
        spec = by_flow[flow]
        by_flow[flow] = spec.model_copy(update={"cron": spec.cron + [expr]})
        try:
            DeploymentSpec(**by_flow[flow].model_dump())  # validates the cron string
        except ValidationError as exc:
            raise VetsetError(f"--cron {item!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    for item in args.param or []:
        key, value = _split(item, "=", "--param")
        flow, dot, field = key.partition(".")
        if not dot or flow not in by_flow:
            raise VetsetError(f"--param {item!r}: expected FLOW.FIELD=VALUE with FLOW among {', '.join(by_flow)}")
        by_flow[flow].parameters[field] = parse_value(value)
    return ServeConfig(deployments=list(by_flow.values()))


def cmd_serve(args: argparse.Namespace) -> int:
    from .. import logging_quiet
    from ..serve import build_deployments, serve

    config = build_config(args)
    if args.check:
        for d in build_deployments(config):
            triggers = len(d.triggers or [])
            crons = [getattr(s.schedule, "cron", str(s.schedule)) for s in (d.schedules or [])]
            print(f"{d.flow_name}/{d.name}: schedules {crons or 'none'}, triggers {triggers}, "
                  f"parameters {json.dumps(d.parameters, default=str)}")
        return 0
    logging_quiet.install()
    serve(config, limit=args.limit)
    return 0


COMMANDS.register("serve")(Command("serve", "serve the flows as Prefect deployments (cron schedules, alert trigger)",
                                   _arguments, cmd_serve))
