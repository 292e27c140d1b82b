"""Sharing a run: `difflab push RUN REPO_ID` uploads RUN/pipeline (which `difflab export RUN`
writes, after_training.export_run) to the Hugging Face Hub, where plain diffusers loads it by its id.

No torch here: a refusal (offline, no token) answers at once.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, create_repo, get_token, upload_folder
from huggingface_hub.errors import HfHubHTTPError

from difflab.errors import InputError, reason
from difflab.jobs.model_card import write_model_card
from difflab.runtime.runs import RunDir

# A refused connection is the HTTP library's own error (httpx or requests, by huggingface_hub's
# version), which is what HfHubHTTPError extends; bad repo ids are ValueErrors.
HUB_ERRORS = (OSError, ValueError, *HfHubHTTPError.__bases__)


def push_run(run_dir: Path, repo_id: str, private: bool) -> str:
    """Upload RUN/pipeline (its card naming `repo_id`) to the Hub; returns the commit's address."""
    run, recipe = RunDir.open(run_dir)
    if not (run.pipeline_dir / "model_index.json").is_file():
        raise InputError(f"{run.path}: no pipeline to push (RUN/pipeline); write it with `difflab export {run.path}`")
    if constants.is_offline_mode():
        raise InputError("difflab push: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); push from a "
                         "machine with a network, without HF_HUB_OFFLINE")
    if get_token() is None:
        raise InputError("difflab push: no Hugging Face token; log in with `hf auth login` (`huggingface-cli login` "
                         "in older huggingface_hub) or set HF_TOKEN to a token with write access")
    write_model_card(run, recipe, repo_id)
    try:
        create_repo(repo_id, private=private, exist_ok=True)
        commit = upload_folder(repo_id=repo_id, folder_path=run.pipeline_dir,
                               commit_message=f"difflab push {run.path.name}")
    except HUB_ERRORS as error:
        raise InputError(f"difflab push {repo_id}: the Hugging Face Hub could not be reached or refused the upload "
                         f"({reason(error)}); check the network, the repo id and that the token may write") from None
    return commit.commit_url
