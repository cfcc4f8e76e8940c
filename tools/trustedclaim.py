"""Provisioning by trusted user: put a temporary claim on a connected board.

    python -m tools.deploy claim [--port P] [--config DIR] [--template NAME] [--endpoint-url URL]
                                 [--iotsim-state DIR] [--dry-run]

At install time a technician runs this with the board on USB: it asks AWS IoT
for a provisioning claim (CreateProvisioningClaim, boto3, the technician's own
credentials) for the template in the board's config.json, and copies the
claim certificate and key (DER, as the board reads them) onto the board under
the names its config.json gives them (certs/claim.der, certs/claim.key.der by
default). The claim is valid for five minutes: boot the board on the network
within that time, and it provisions like with any claim. No long-lived claim
needs to be in the firmware image.

The key exists on the host only in a private temporary folder (mode 0700)
while mpremote copies it, and is never printed. `--endpoint-url` points at
iotsim's control plane (``python -m tools.iotsim status``): a local URL signs
with iotsim's own key, in its region, from its state folder (the config
folder when it is one, else ``.iotsim``, or ``--iotsim-state``), so no AWS
variable is needed. Every failure is a DeployError with a one-line message.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import deploy

# The marker beside a temporary claim: the board deletes a claim it marks once its own
# identity works (lib/credstore.py's TEMPORARY_CLAIM; tests/host/test_credstore.py checks they agree).
TEMPORARY_CLAIM = "claim.temporary"

log = logging.getLogger("deploy")


def iot_client(
    endpoint_url: str | None, region: str | None, profile: str | None, iotsim_states: list[Path]
) -> Any:
    """boto3's ``iot`` client: the user's AWS configuration, or iotsim's key for a local endpoint."""
    from botocore.exceptions import BotoCoreError

    from .iotsim import localaws  # boto3: only this command needs it

    try:
        session = localaws.session(endpoint_url, region, profile, iotsim_states)
        return session.client("iot", endpoint_url=endpoint_url)
    except localaws.LocalProfileError as exc:
        raise deploy.DeployError(str(exc)) from None
    except BotoCoreError as exc:
        raise deploy.DeployError(
            "{} (AWS: `aws configure` sets credentials and region; iotsim: --endpoint-url from "
            "`python -m tools.iotsim status`)".format(exc)
        ) from None


def request_claim(iot: Any, template: str) -> tuple[str, bytes, bytes, datetime]:
    """(certificateId, certificate DER, PKCS#8 key DER, expiry) of a new provisioning claim."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = iot.create_provisioning_claim(templateName=template)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise deploy.DeployError(
            "CreateProvisioningClaim for template {} failed: {}: {}".format(
                template, err.get("Code"), err.get("Message")
            )
        ) from None
    except BotoCoreError as exc:
        raise deploy.DeployError(
            "CreateProvisioningClaim failed: {} (AWS credentials: `aws configure`; iotsim: --endpoint-url "
            "from `python -m tools.iotsim status`)".format(" ".join(str(exc).split()))
        ) from None
    cert = x509.load_pem_x509_certificate(answer["certificatePem"].encode("ascii"))
    key = serialization.load_pem_private_key(answer["keyPair"]["PrivateKey"].encode("ascii"), password=None)
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (
        answer["certificateId"],
        cert.public_bytes(serialization.Encoding.DER),
        key_der,
        answer["expiration"],
    )


def install_claim(
    port: str | None, config_dir: Path, iot: Any, template: str | None = None, dry_run: bool = False
) -> str | None:
    """Ask for a claim and copy it onto the board; returns its certificateId (None on a dry run)."""
    config = deploy.read_config(config_dir)
    cert_dir = deploy.board_cert_dir(config)
    names = deploy.claim_file_names(config)
    template = template or config.get("template")
    if not isinstance(template, str) or not template:
        raise deploy.DeployError(
            '{}: no template; give --template NAME or set "template" in config.json'.format(
                config_dir / "config.json"
            )
        )
    dests = ["{}/{}".format(cert_dir, names["claim_cert"]), "{}/{}".format(cert_dir, names["claim_key"])]
    inventory = deploy.board_inventory(port, [cert_dir])
    if "config.json" not in inventory:
        log.warning(
            "the board has no config.json yet: run `make deploy` too, or the claim has nothing to provision with"
        )
    if dry_run:
        log.info(
            "would ask for a provisioning claim for template %s and copy it to %s",
            template,
            " and ".join(dests),
        )
        return None
    cid, cert_der, key_der, expires = request_claim(iot, template)
    folder = Path(tempfile.mkdtemp(prefix="fleetprov-claim-"))  # mode 0700
    try:
        cert_path, key_path = folder / "claim.der", folder / "claim.key.der"
        cert_path.write_bytes(cert_der)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_der)
        marker_path = folder / TEMPORARY_CLAIM
        marker_path.write_text("{} valid until {}\n".format(cid, expires))
        plan = deploy.Plan(
            mkdirs=[cert_dir] if cert_dir + "/" not in inventory else [],
            # the marker last: the board deletes a claim it marks once provisioned
            copies=[
                deploy.Upload(cert_path, dests[0]),
                deploy.Upload(key_path, dests[1]),
                deploy.Upload(marker_path, "{}/{}".format(cert_dir, TEMPORARY_CLAIM)),
            ],
            removes=[],
            unchanged=[],
        )
        deploy.run_mpremote(port, deploy.plan_commands(plan), "copying the provisioning claim")
    except deploy.DeployError as exc:
        raise deploy.DeployError(
            "{}; the claim {} was issued but not installed; it expires by itself at {}".format(
                exc, cid, expires
            )
        ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log.info("provisioning claim %s for template %s on the board as %s", cid, template, " and ".join(dests))
    log.info("valid until %s: boot the board on the network before then (reset it)", expires)
    return cid
