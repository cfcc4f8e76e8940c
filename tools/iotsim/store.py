"""One JSON document of the control plane's state (``<state>/controlplane/<name>.json``),
rewritten atomically: IAM roles, Lambda functions, topic rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from . import pki


class JsonFile:
    """``load()`` gives the document (a fresh copy of ``empty`` when there is none); ``save()`` replaces it."""

    def __init__(self, path: Path, empty: dict[str, Any]) -> None:
        self.path = Path(path)
        self.empty = empty

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return copy.deepcopy(self.empty)

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pki.write_atomic(self.path, json.dumps(data, indent=2).encode())
