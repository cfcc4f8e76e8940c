"""``python -m tools.iotsim``: run and inspect the local AWS IoT fleet-provisioning stand-in.

up       prepare the state folder and run mosquitto + the provisioning service
down     stop a running `up` (through its pid file)
status   is it running, on which port, how many certificates and things
things   the things the registry holds, and its thing groups, thing types, billing groups
certs    the certificates and their status
revoke   revoke a certificate: the broker refuses it from then on (the claim: --force)
new-claim  issue a fresh claim certificate and retire the old one
policies   the named policies and how many certificates each is attached to
create-thing-group, create-thing-type, create-billing-group NAME
create-policy NAME FILE, attach-policy NAME CERT, detach-policy NAME CERT
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from .limits import CERT_DAYS, MAX_BODY, MAX_CONNECTIONS, REQUEST_TIMEOUT_S
from .registry import (
    BILLING_GROUP,
    CLAIM,
    DB_FILE,
    DEFAULT_TOKEN_TTL,
    INACTIVE,
    THING_GROUP,
    THING_TYPE,
    Registry,
    ResourceError,
)

DEFAULT_STATE = Path(".iotsim")
PID_FILE = "iotsim.pid"


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path("/proc/{}/stat".format(pid)).read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pid_info(state: Path) -> dict[str, object] | None:
    """The pid file's content when its process still runs; a stale file is removed."""
    path = state / PID_FILE
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if not _alive(pid):
        path.unlink(missing_ok=True)
        return None
    return info


def _open_registry(state: Path) -> Registry:
    if not (state / DB_FILE).exists():
        raise CliError(
            "no iotsim state in {}: start it with `python -m tools.iotsim up --state {}`".format(state, state)
        )
    return Registry(state)


def cmd_up(args: argparse.Namespace) -> int:
    from .stack import IotSim  # imports paho and the broker only when needed

    state: Path = args.state.resolve()
    running = _pid_info(state)
    if running is not None:
        raise CliError(
            "iotsim already runs for {} (pid {}, port {}); stop it with "
            "`python -m tools.iotsim down --state {}`".format(
                state, running["pid"], running["port"], args.state
            )
        )
    if args.token_ttl <= 0:
        raise CliError("--token-ttl must be positive seconds, got {}".format(args.token_ttl))
    if args.cert_days < 1:
        raise CliError("--cert-days must be a whole number of days, 1 or more, got {}".format(args.cert_days))
    if args.tps is not None and args.tps < 0:
        raise CliError("--tps must be 0 (off) or positive requests per second, got {}".format(args.tps))
    for option, value in (
        ("--api-timeout", args.api_timeout),
        ("--api-connections", args.api_connections),
        ("--api-max-body", args.api_max_body),
    ):
        if value <= 0:
            raise CliError("{} must be positive, got {}".format(option, value))
    sim = IotSim(
        state,
        args.port,
        tps=args.tps,
        token_ttl=args.token_ttl,
        hook=args.hook,
        single_use_tokens=not args.token_reuse,
        tokens_bound_to_requester=not args.token_unbound,
        region=args.region,
        account=args.account,
        api_port=args.api_port,
        lambdas=_lambdas(args.lambda_hooks),
        api_timeout=args.api_timeout,
        api_connections=args.api_connections,
        api_max_body=args.api_max_body,
        cert_days=args.cert_days,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sim.start()
    except Exception as exc:
        hint = ""
        if "Address already in use" in str(exc):
            hint = "\nport {} is taken: stop what uses it or choose another with --port".format(args.port)
        raise CliError("iotsim did not start: {}{}".format(exc, hint)) from exc
    pid_path = state / PID_FILE
    try:
        pid_path.write_text(
            json.dumps({"pid": os.getpid(), "port": sim.port, "api_port": sim.api_port, "started": time.time()})
            + "\n"
        )
        assert sim.claim is not None
        from ..awssetup import lambdas
        from . import localaws

        print("iotsim is running: mosquitto with TLS client certificates on 127.0.0.1:{}".format(sim.port))
        print("AWS IoT control plane (and IAM): {}, SigV4-signed with iotsim's own key:".format(sim.api_url))
        print("  export {}".format(localaws.environment(state)))
        print("state folder: {} (mode 0700; key files 0600)".format(state))
        print("  CA certificate          {} (DER: {})".format(sim.ca_path, sim.ca_der))
        print("  claim certificate + key {}, {}".format(sim.claim.cert_path, sim.claim.key_path))
        print("                    (DER) {}, {}".format(sim.claim.cert_der_path, sim.claim.key_der_path))
        print(
            "  provisioning template   {} (name: FleetprovDemo)".format(sim.templates.path("FleetprovDemo"))
        )
        print(
            "  rotation template       {} (name: FleetprovRotation; hook: Lambda {})".format(
                sim.templates.path("FleetprovRotation"), lambdas.HOOK_FUNCTION
            )
        )
        print("  retire rule             {} on {} (Lambda {})".format(
            lambdas.RETIRE_RULE, lambdas.RETIRE_TOPIC_FILTER, lambdas.RETIRE_FUNCTION
        ))
        print(
            "  device config.json      {} (+ certs/ with ca.der, claim.der, claim.key.der)".format(
                sim.config_path
            )
        )
        print("  AWS profile {:<11} {}, {}".format(
            localaws.PROFILE, localaws.config_path(state), localaws.credentials_path(state)
        ))
        print("  registry                {}".format(state / DB_FILE))
        print("  broker log              {}".format(state / "mosquitto.log"))
        if args.tps is None:
            throttle = "AWS's rates"
        else:
            throttle = "{:g} requests/s per operation".format(args.tps) if args.tps else "off"
        print(
            "throttling: {}; ownership tokens expire after {:g} s; device certificates valid {} days; "
            "hook: {}".format(throttle, args.token_ttl, args.cert_days, args.hook or "none")
        )
        print(
            "ownership tokens: {}, {} (iotsim's choices; AWS documents neither)".format(
                "reusable" if args.token_reuse else "single use",
                "usable by any identity" if args.token_unbound else "bound to the identity that asked",
            )
        )
        print("stop with Ctrl-C or `python -m tools.iotsim down --state {}`".format(args.state))
        sys.stdout.flush()
        while not stop.wait(1.0):
            if sim.broker is not None and not sim.broker.running:
                print("mosquitto exited; see {}".format(state / "mosquitto.log"), file=sys.stderr)
                return 1
    finally:
        sim.stop()
        pid_path.unlink(missing_ok=True)
    print("iotsim stopped")
    return 0


def _lambdas(specs: list[str]) -> dict[str, str]:
    """``--lambda NAME=module:function`` options as {function name: hook}."""
    result = {}
    for spec in specs:
        name, sep, hook = spec.partition("=")
        if not sep or not name or ":" not in hook:
            raise CliError("--lambda wants NAME=module:function, got {!r}".format(spec))
        result[name] = hook
    return result


def cmd_down(args: argparse.Namespace) -> int:
    state: Path = args.state.resolve()
    info = _pid_info(state)
    if info is None:
        print("iotsim is not running for {}".format(state))
        return 0
    pid = int(info["pid"])  # type: ignore[arg-type]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            (state / PID_FILE).unlink(missing_ok=True)
            print("iotsim (pid {}) stopped".format(pid))
            return 0
        time.sleep(0.05)
    raise CliError(
        "iotsim (pid {}) did not stop within {:g} s; kill it with `kill -9 {}`".format(pid, args.timeout, pid)
    )


def cmd_status(args: argparse.Namespace) -> int:
    state: Path = args.state.resolve()
    info = _pid_info(state)
    if info is None:
        print("iotsim: not running (state folder {})".format(state))
    else:
        print("iotsim: running, pid {}, port {} (state folder {})".format(info["pid"], info["port"], state))
        if info.get("api_port"):
            print("control plane: http://127.0.0.1:{}".format(info["api_port"]))
    if (state / DB_FILE).exists():
        with Registry(state) as reg:
            counts = Counter(c.status for c in reg.certificates())
            things = len(reg.things())
        summary = ", ".join("{} {}".format(n, s) for s, n in sorted(counts.items())) or "none"
        print("certificates: {}".format(summary))
        print("things: {}".format(things))
    return 0 if info is not None else 3


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cmd_things(args: argparse.Namespace) -> int:
    with _open_registry(args.state.resolve()) as reg:
        things = reg.things()
        resources = {kind: reg.resources(kind) for kind in (THING_GROUP, THING_TYPE, BILLING_GROUP)}
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "thingName": t.name,
                        "attributes": t.attributes,
                        "thingTypeName": t.thing_type,
                        "thingGroups": t.groups,
                        "certificates": t.certificates,
                    }
                    for t in things
                ],
                indent=2,
            )
        )
        return 0
    if not things:
        print("no things yet")
    for t in things:
        attrs = ",".join("{}={}".format(k, v) for k, v in sorted(t.attributes.items()))
        print(
            "{}  created {}  certificates {}  attributes {}".format(
                t.name, _when(t.created), ",".join(c[:12] for c in t.certificates) or "-", attrs or "-"
            )
        )
    for kind, names in resources.items():
        print("{}s: {}".format(kind.replace("-", " "), ", ".join(names) or "none"))
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    with _open_registry(args.state.resolve()) as reg:
        rows = [(c, reg.thing_of(c.id)) for c in reg.certificates()]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "certificateId": c.id,
                        "status": c.status,
                        "created": c.created,
                        "thingName": thing,
                    }
                    for c, thing in rows
                ],
                indent=2,
            )
        )
        return 0
    for c, thing in rows:
        print("{}  {:<18}  {}  {}".format(c.id, c.status, _when(c.created), thing or "-"))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _open_registry(args.state.resolve()) as reg:
        wanted = args.certificate_id.lower()
        matches = [c.id for c in reg.certificates() if c.id.startswith(wanted)]
        if len(wanted) < 8 or not matches:
            raise CliError(
                "no certificate {!r} (give the 64-hex certificateId, or a unique prefix of at least 8); "
                "`python -m tools.iotsim certs` lists them".format(args.certificate_id)
            )
        if len(matches) > 1:
            raise CliError(
                "{!r} matches {} certificates; give more of the id".format(args.certificate_id, len(matches))
            )
        if reg.status(matches[0]) == CLAIM and not args.force:
            raise CliError(
                "{} is the claim certificate. Revoking it stops every device that is not provisioned yet: "
                "they connect with it, so none of them can provision until it gets a new claim "
                "(`python -m tools.iotsim new-claim` issues one). Devices already provisioned keep working. "
                "Run again with --force to revoke it.".format(matches[0])
            )
        reg.revoke(matches[0])
    print("revoked {}: the broker refuses it from its next connection or publish".format(matches[0]))
    return 0


def cmd_new_claim(args: argparse.Namespace) -> int:
    from . import pki  # cryptography: loaded only by the commands that make certificates
    from .stack import ensure_policies, install_device_certs

    state: Path = args.state.resolve()
    with _open_registry(state) as reg:
        ca = pki.CertificateAuthority.load_or_create(state)
        old = [c.id for c in reg.certificates() if c.status == CLAIM]
        claim = pki.ensure_client_identity(state, ca, "claim", "iotsim-claim", renew=True)
        reg.add_certificate(claim.certificate_id, claim.cert_path.read_text(encoding="ascii"), CLAIM)
        ensure_policies(reg, claim.certificate_id)
        for cid in old:
            reg.set_status(cid, INACTIVE)
    certs = install_device_certs(state, claim)
    print("new claim certificate {}".format(claim.certificate_id))
    print(
        "  files: {}, {} (DER: {}, {}; and {}/claim.der, claim.key.der)".format(
            claim.cert_path, claim.key_path, claim.cert_der_path, claim.key_der_path, certs
        )
    )
    for cid in old:
        print("retired the old claim {}: INACTIVE, the broker refuses it from now on".format(cid))
    return 0


def _control(action: object) -> int:
    try:
        return int(action())  # type: ignore[operator]
    except ResourceError as exc:
        raise CliError("{}: {}".format(exc.error_code, exc.message)) from None


def cmd_create_resource(args: argparse.Namespace) -> int:
    with _open_registry(args.state.resolve()) as reg:
        created = _control(lambda: reg.create_resource(args.kind, args.name))
    print(
        "{} {} {}".format(args.kind.replace("-", " "), args.name, "created" if created else "already exists")
    )
    return 0


def cmd_create_policy(args: argparse.Namespace) -> int:
    try:
        document = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError("cannot read the policy document {}: {}".format(args.file, exc)) from None
    with _open_registry(args.state.resolve()) as reg:
        _control(lambda: reg.create_policy(args.name, document) or 0)
    print("policy {} created".format(args.name))
    return 0


def _certificate(reg: Registry, wanted: str) -> str:
    matches = [c.id for c in reg.certificates() if c.id.startswith(wanted.lower())]
    if len(wanted) < 8 or len(matches) != 1:
        raise CliError("no unique certificate {!r}; `python -m tools.iotsim certs` lists them".format(wanted))
    return matches[0]


def cmd_attach_policy(args: argparse.Namespace) -> int:
    with _open_registry(args.state.resolve()) as reg:
        cid = _certificate(reg, args.certificate_id)
        if args.detach:
            reg.detach_policy(args.name, cid)
        else:
            _control(lambda: reg.attach_policy(args.name, cid) or 0)
    print(
        "policy {} {} certificate {}".format(
            args.name, "detached from" if args.detach else "attached to", cid
        )
    )
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    with _open_registry(args.state.resolve()) as reg:
        rows = reg.policies()
    if args.json:
        print(
            json.dumps([{"policyName": n, "policyDocument": d, "targets": t} for n, d, t in rows], indent=2)
        )
        return 0
    for name, _, targets in rows:
        print("{}  attached to {} certificate(s)".format(name, targets))
    if not rows:
        print("no policies")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.iotsim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state folder (default: .iotsim)")
        # -v after the subcommand too, as docs/iotsim.md's synopsis writes it; SUPPRESS
        # keeps `-v up` (the option before the subcommand) from being reset to False.
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log requests")
        return p

    up = add("up", "prepare the state folder and run iotsim until Ctrl-C or `down`")
    up.add_argument("--port", type=int, default=8883, help="MQTT over TLS port on 127.0.0.1 (default 8883)")
    up.add_argument(
        "--tps",
        type=float,
        default=None,
        help="throttle each operation to this many requests per second; 0: off "
        "(default: AWS's rates, docs/iotsim.md)",
    )
    up.add_argument(
        "--token-ttl",
        type=float,
        default=DEFAULT_TOKEN_TTL,
        help="ownership token lifetime in seconds (default 3600, as AWS)",
    )
    up.add_argument(
        "--cert-days",
        type=int,
        default=CERT_DAYS,
        help="validity in days of the device certificates iotsim issues (default %(default)d); "
        "a certificate past it cannot connect",
    )
    up.add_argument(
        "--hook",
        default=None,
        metavar="MODULE:FUNCTION",
        help="pre-provisioning hook, e.g. tools.iotsim.hooks:allowlist",
    )
    up.add_argument(
        "--region",
        default="local",
        help="the region in the resource ARNs policies are evaluated against (default local)",
    )
    up.add_argument(
        "--account",
        default="000000000000",
        help="the account in the resource ARNs policies are evaluated against (default 000000000000)",
    )
    up.add_argument(
        "--api-port",
        type=int,
        default=0,
        help="the AWS IoT control-plane HTTP port on 127.0.0.1 (default: a free one, shown by `status`)",
    )
    up.add_argument(
        "--api-timeout",
        type=float,
        default=REQUEST_TIMEOUT_S,
        help="seconds a control-plane connection has to send each whole request "
        "(iotsim's choice, default %(default)g)",
    )
    up.add_argument(
        "--api-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help="control-plane connections served at once; more get 503 (iotsim's choice, default %(default)d)",
    )
    up.add_argument(
        "--api-max-body",
        type=int,
        default=MAX_BODY,
        help="largest control-plane request body in bytes; larger: 413 (iotsim's choice, default %(default)d)",
    )
    up.add_argument(
        "--lambda",
        dest="lambda_hooks",
        action="append",
        default=[],
        metavar="NAME=MODULE:FUNCTION",
        help="a Lambda function a template's preProvisioningHook may name "
        "(arn:aws:lambda:REGION:ACCOUNT:function:NAME), run as this local hook; repeatable",
    )
    up.add_argument(
        "--token-reuse",
        action="store_true",
        help="let an ownership token be used more than once (AWS documents no rule; default: single use)",
    )
    up.add_argument(
        "--token-unbound",
        action="store_true",
        help="let any identity use a token, not only the one that asked for the certificate "
        "(AWS documents no rule; default: bound)",
    )
    up.set_defaults(func=cmd_up)
    down = add("down", "stop a running `up`")
    down.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for it to exit")
    down.set_defaults(func=cmd_down)
    add("status", "running or not, port, certificate and thing counts").set_defaults(func=cmd_status)
    things = add("things", "list the registry's things")
    things.add_argument("--json", action="store_true")
    things.set_defaults(func=cmd_things)
    certs = add("certs", "list certificates and their status")
    certs.add_argument("--json", action="store_true")
    certs.set_defaults(func=cmd_certs)
    revoke = add("revoke", "revoke a certificate")
    revoke.add_argument("certificate_id", help="certificateId (64 hex digits) or a unique prefix")
    revoke.add_argument("--force", action="store_true", help="also revoke the claim certificate")
    revoke.set_defaults(func=cmd_revoke)
    add(
        "new-claim", "issue a fresh claim certificate (files in the state folder and certs/), retire the old"
    ).set_defaults(func=cmd_new_claim)
    for kind in (THING_GROUP, THING_TYPE, BILLING_GROUP):
        p = add(
            "create-" + kind,
            "create a {} (a template may name it from then on)".format(kind.replace("-", " ")),
        )
        p.add_argument("name")
        p.set_defaults(func=cmd_create_resource, kind=kind)
    create_policy = add("create-policy", "create a named policy from an AWS IoT policy document (JSON file)")
    create_policy.add_argument("name")
    create_policy.add_argument("file", help="the policy document")
    create_policy.set_defaults(func=cmd_create_policy)
    for verb, detach in (("attach-policy", False), ("detach-policy", True)):
        p = add(
            verb, "{} a named policy {} a certificate".format(verb.split("-")[0], "from" if detach else "to")
        )
        p.add_argument("name")
        p.add_argument("certificate_id", help="certificateId or a unique prefix of at least 8")
        p.set_defaults(func=cmd_attach_policy, detach=detach)
    policies = add("policies", "list the named policies")
    policies.add_argument("--json", action="store_true")
    policies.set_defaults(func=cmd_policies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return int(args.func(args))
    except CliError as exc:
        print("iotsim: {}".format(exc), file=sys.stderr)
        return 1
