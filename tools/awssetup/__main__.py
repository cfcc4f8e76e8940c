"""Set up (and tear down) what a fleetprov fleet needs in an AWS account, with boto3.

    python -m tools.awssetup setup    [--folder device] [--dry-run] [options]
    python -m tools.awssetup teardown [--folder device] [--dry-run]

``setup`` creates the provisioning role (trusting iot.amazonaws.com, with
AWSIoTThingsRegistration), the thing group, the thing policy, the provisioning
template (enabled), a claim certificate and its claim policy, and what a
device's certificate rotation needs (docs/rotation.md): the rotation template
with its pre-provisioning hook, the retire rule, their Lambda functions and
roles; then it writes the device folder that ``make deploy`` reads:
``config.json`` with the account's -ats endpoint and ``certs/`` with ``ca.der``
(Amazon Root CA 1), ``claim.der`` and ``claim.key.der``. Run again, it changes
nothing and says so. ``teardown`` removes exactly what ``setup`` created (see
tools/awssetup/setup.py).

Credentials and region come from the usual places (``aws configure``,
AWS_PROFILE, AWS_REGION, ...). ``--endpoint-url`` with a local URL (iotsim's
control plane, ``python -m tools.iotsim status`` shows it) sends the AWS IoT,
IAM and Lambda calls there, signed with iotsim's own key and in its region (from
its state folder: ``.iotsim`` or ``--iotsim-state DIR``); no AWS variable is
needed. Every error is one line on stderr (exit status 1; 2 for credentials
and region).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .setup import DEFAULT_TEMPLATE_FILE, Clients, Options, Setup, SetupError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.awssetup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        (
            "setup",
            "create the role, thing group, policies, templates, claim certificate and the rotation's "
            "functions and rule; write the device folder",
        ),
        ("teardown", "delete what setup created (as listed in FOLDER/awssetup.json and tagged)"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument(
            "--folder", type=Path, default=Path("device"), help="the device folder (default: device/)"
        )
        p.add_argument(
            "--name", default="fleetprov", help="the setup's name, the value of its tags (default fleetprov)"
        )
        p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
        p.add_argument("--region", default=None, help="AWS region (default: your AWS configuration)")
        p.add_argument("--profile", default=None, help="AWS profile (default: your AWS configuration)")
        p.add_argument(
            "--endpoint-url",
            default=None,
            help="AWS IoT control-plane URL (iotsim: see `python -m tools.iotsim status`; it answers IAM too)",
        )
        p.add_argument(
            "--iotsim-state",
            type=Path,
            default=None,
            help="iotsim's state folder, whose key signs for a local --endpoint-url (default: .iotsim)",
        )
        if name == "setup":
            p.add_argument("--template-name", default="FleetprovDemo")
            p.add_argument("--template-file", type=Path, default=DEFAULT_TEMPLATE_FILE)
            p.add_argument("--role-name", default="FleetprovProvisioningRole")
            p.add_argument(
                "--thing-group", default="fleetprov-demo", help="the group the template puts things in"
            )
            p.add_argument("--claim-policy", default="FleetprovClaimPolicy")
            for option, field_name in (
                ("--rotation-template", "rotation_template"),
                ("--hook-function", "hook_function"),
                ("--hook-role", "hook_role"),
                ("--retire-function", "retire_function"),
                ("--retire-role", "retire_role"),
                ("--retire-rule", "retire_rule"),
            ):
                p.add_argument(option, dest=field_name, default=getattr(Options, field_name))
            p.add_argument(
                "--ca-file",
                type=Path,
                default=None,
                help="the CA (PEM) devices trust (default: the system's Amazon Root CA 1)",
            )
            p.add_argument(
                "--mqtt-port",
                type=int,
                default=None,
                help="MQTT port for config.json (default: none, AWS's 8883)",
            )
            p.add_argument("--method", choices=("csr", "keys"), default="csr")
            p.add_argument("--format", dest="fmt", choices=("cbor", "json"), default="cbor")
    return parser


def clients(args: argparse.Namespace) -> Clients:
    from ..iotsim import localaws  # boto3 and botocore: `--help` works without them

    states = [args.iotsim_state or localaws.DEFAULT_STATE]
    session = localaws.session(args.endpoint_url, args.region, args.profile, states)
    local = localaws.is_local(args.endpoint_url)
    local_url = args.endpoint_url if local else None  # iotsim answers IAM and Lambda on its own endpoint
    return Clients(
        iot=session.client("iot", endpoint_url=args.endpoint_url),
        iam=session.client("iam", endpoint_url=local_url),
        lam=session.client("lambda", endpoint_url=local_url),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(folder=args.folder, name=args.name, dry_run=args.dry_run)
    if args.command == "setup":
        options.template_name = args.template_name
        options.template_file = args.template_file
        options.role_name = args.role_name
        options.thing_group = args.thing_group
        options.claim_policy = args.claim_policy
        for field_name in ("rotation_template", "hook_function", "hook_role", "retire_function", "retire_role",
                           "retire_rule"):
            setattr(options, field_name, getattr(args, field_name))
        options.ca_file = args.ca_file
        options.mqtt_port = args.mqtt_port
        options.method = args.method
        options.fmt = args.fmt
    try:
        from botocore.exceptions import BotoCoreError

        from ..iotsim.localaws import LocalProfileError
        from .setup import explain

        try:
            tool = Setup(options, clients(args))
        except BotoCoreError as exc:
            raise explain(exc, "connecting to AWS") from exc
        except LocalProfileError as exc:
            raise SetupError(str(exc), 2) from exc
        if args.command == "setup":
            tool.setup()
        else:
            tool.teardown()
    except SetupError as exc:
        print("awssetup: {}".format(exc), file=sys.stderr)
        return exc.status
    except OSError as exc:  # the device folder or a file it names
        print("awssetup: {}".format(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
