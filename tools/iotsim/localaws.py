"""iotsim's own AWS credentials, and the AWS profile that names them for boto3 and the AWS CLI.

``up`` makes an access key pair once (kept across restarts) and writes, in the state folder:

    <state>/aws/credentials   [iotsim] aws_access_key_id, aws_secret_access_key   (mode 0600)
    <state>/aws/config        [profile iotsim] region, endpoint_url                (the control plane)

so that ``AWS_CONFIG_FILE=<state>/aws/config AWS_SHARED_CREDENTIALS_FILE=<state>/aws/credentials
AWS_PROFILE=iotsim`` points boto3 and the AWS CLI at iotsim, signed with the key the control
plane checks (tools/iotsim/sigv4.py). The project's own tools need none of that: given a local
endpoint URL (127.0.0.1, localhost), :func:`session` finds the state folder that serves it and
signs with its profile (:func:`find`).
"""

from __future__ import annotations

import configparser
import io
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pki
from .sigv4 import Credentials

PROFILE = "iotsim"
FOLDER = "aws"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_STATE = Path(".iotsim")


class LocalProfileError(Exception):
    """No iotsim state folder serves the endpoint; the message says where it looked and what to do."""


@dataclass(frozen=True)
class LocalProfile:
    credentials: Credentials
    region: str
    endpoint_url: str


def config_path(state: Path) -> Path:
    return Path(state) / FOLDER / "config"


def credentials_path(state: Path) -> Path:
    return Path(state) / FOLDER / "credentials"


def environment(state: Path) -> str:
    """The shell line that makes boto3 and the AWS CLI use iotsim's profile."""
    return "AWS_CONFIG_FILE={} AWS_SHARED_CREDENTIALS_FILE={} AWS_PROFILE={}".format(
        config_path(state), credentials_path(state), PROFILE
    )


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, configparser.Error):
        pass
    return parser


def _write(path: Path, sections: dict[str, dict[str, str]], private: bool) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(sections)
    text = io.StringIO()
    parser.write(text)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    pki.write_atomic(path, text.getvalue().encode(), private=private)


def ensure_credentials(state: Path) -> Credentials:
    """The state folder's key pair, made on first use."""
    parser = _read(credentials_path(state))
    section = parser[PROFILE] if parser.has_section(PROFILE) else {}
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if key and secret:
        return Credentials(key, secret)
    made = Credentials.new()
    _write(
        credentials_path(state),
        {PROFILE: {"aws_access_key_id": made.access_key, "aws_secret_access_key": made.secret_key}},
        private=True,
    )
    return made


def write_config(state: Path, region: str, endpoint_url: str) -> None:
    """The profile's region and the control plane's URL (rewritten by every ``up``)."""
    _write(
        config_path(state),
        {"profile " + PROFILE: {"region": region, "endpoint_url": endpoint_url}},
        private=False,
    )


def read(state: Path) -> LocalProfile | None:
    creds, config = _read(credentials_path(state)), _read(config_path(state))
    section = "profile " + PROFILE
    if not creds.has_section(PROFILE) or not config.has_section(section):
        return None
    try:
        return LocalProfile(
            Credentials(creds[PROFILE]["aws_access_key_id"], creds[PROFILE]["aws_secret_access_key"]),
            config[section]["region"],
            config[section]["endpoint_url"],
        )
    except KeyError:
        return None


def is_local(endpoint_url: str | None) -> bool:
    return bool(endpoint_url) and urllib.parse.urlsplit(endpoint_url).hostname in LOCAL_HOSTS


def _port(url: str) -> int | None:
    try:
        return urllib.parse.urlsplit(url).port
    except ValueError:
        return None


def find(endpoint_url: str, folders: Sequence[Path]) -> LocalProfile:
    """The profile of the iotsim state folder (among ``folders``) whose control plane is ``endpoint_url``."""
    seen = []
    for folder in folders:
        profile = read(folder)
        if profile is None:
            seen.append("{} (no iotsim profile)".format(folder))
            continue
        if _port(profile.endpoint_url) == _port(endpoint_url):
            return profile
        seen.append("{} (serves {})".format(folder, profile.endpoint_url))
    raise LocalProfileError(
        "{} is a local endpoint but no iotsim state folder here serves it: looked in {}. Start iotsim "
        "(`python -m tools.iotsim up`) or name its state folder with --iotsim-state DIR".format(
            endpoint_url, "; ".join(seen) or "nothing"
        )
    )


def session(
    endpoint_url: str | None, region: str | None, profile: str | None, folders: Sequence[Path]
) -> Any:
    """A boto3 session: iotsim's own profile for a local endpoint (unless ``profile`` is given),
    else the user's AWS configuration."""
    import boto3  # only the commands that call AWS need it

    if endpoint_url and is_local(endpoint_url) and profile is None:
        local = find(endpoint_url, folders)
        return boto3.Session(
            aws_access_key_id=local.credentials.access_key,
            aws_secret_access_key=local.credentials.secret_key,
            region_name=region or local.region,
        )
    return boto3.Session(profile_name=profile, region_name=region)
