"""Whether the Hugging Face hub can be asked at all, answered in seconds.

Without a network, huggingface_hub retries for about 25 s before it gives up; a learner offline
who names a hub id that is not in the cache should hear so at once. Datasets, pipelines and
`train.init_from` sources ask here before they go online.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from huggingface_hub import constants

from difflab.errors import InputError, reason

T = TypeVar("T")

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HUB_CONNECT_TIMEOUT_S = 3.0


def hub_unreachable(endpoint: str | None = None) -> str | None:
    """Why the hub cannot be asked now (offline mode, or its host does not answer), or None when it
    can. Behind a proxy the proxy decides, so it is not second-guessed."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlparse(endpoint or constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        return f"{url.hostname}: {error}"
    return None


def cache_then_hub(load: Callable[..., T], what: str, missing: str = "no such pipeline") -> T:
    """`load(local_files_only=...)`: from the local Hugging Face cache, else from the hub when it can
    be asked; an InputError naming `what` when neither has it."""
    try:
        return load(local_files_only=True)
    except (OSError, ValueError):
        pass  # not cached: ask the hub
    unreachable = hub_unreachable()
    if unreachable:
        raise InputError(f"{what}: not a local folder, not in the Hugging Face cache, and the hub cannot be "
                         f"asked ({unreachable}). Offline, download it elsewhere and copy the folder here.")
    try:
        return load(local_files_only=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{what}: not a local folder, not in the Hugging Face cache, and the hub "
                         f"could not be reached or has {missing} ({reason(error)}). "
                         f"Offline, download it elsewhere and copy the folder here.") from None
