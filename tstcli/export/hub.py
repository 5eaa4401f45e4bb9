"""`tst export --push-to-hub`: upload an export directory with huggingface-hub (create the repo, the branch, one
commit of the folder). Any failure — offline, unauthorised, no network, a bad repo id — is one line, exit 3; the
local export is never touched."""
from __future__ import annotations

from pathlib import Path

from tstcli.errors import DataError


def push(out: Path, repo_id: str, private: bool, revision: str | None) -> str:
    """Upload `out` to `repo_id` (at `revision`, a branch made if missing); the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(out), repo_id=repo_id, revision=revision,
                                 commit_message=f"Upload {out.name} (tst export)")
    except Exception as e:  # huggingface-hub's errors (offline mode, HTTP 401/403/404, connection) end here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"--push-to-hub {repo_id}: upload failed ({type(e).__name__}: {reason}); the export in "
                        f"{out} is complete and untouched") from None
    return getattr(info, "commit_url", None) or str(info)
