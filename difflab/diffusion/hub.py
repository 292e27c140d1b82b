"""Whether the Hugging Face hub can be asked at all, answered in seconds.

Without a network, huggingface_hub retries for about 25 s before it gives up; a learner offline
who names a hub id that is not in the cache should hear so at once. Datasets, pipelines and
`train.init_from` sources ask here before they go online.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants

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
