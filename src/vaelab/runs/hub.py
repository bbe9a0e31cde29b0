"""The Hugging Face Hub, through ``huggingface_hub`` (the optional extra ``vaelab[hub]``):
``hf://USER/REPO[@REVISION]`` names a model there; :func:`download` brings its files into
``huggingface_hub``'s own cache (its token handling, offline mode and revisions apply) and
:func:`upload` sends a folder. Only a model's data files are asked for (weights as
safetensors, TOML and JSON, PNGs, the card): nothing that could execute."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from ..errors import DataError

PREFIX = "hf://"
FILES = ["model.safetensors", "config.toml", "config.json", "README.md", "metrics.jsonl",
         "evaluate.json", "baselines.json", "classify.json", "figures/*.png"]
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_hub(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None]:
    """``hf://USER/REPO[@REVISION]`` -> (repo id, revision or None)."""
    body = spec[len(PREFIX):]
    repo, _, revision = body.partition("@")
    if not _REPO.match(repo) or (_ and not revision):
        raise DataError(f"{spec!r} is not a Hub model name; write hf://USER/REPO or "
                        "hf://USER/REPO@REVISION (a branch, tag or commit)")
    return repo, revision or None


def _library():
    try:
        import huggingface_hub
    except ImportError:
        raise DataError("models on the Hugging Face Hub need the huggingface_hub package: "
                        "pip install 'vaelab[hub]'") from None
    return huggingface_hub


@functools.lru_cache(maxsize=16)
def download(spec: str) -> Path:
    """The local folder (in huggingface_hub's cache) that holds the model ``spec``; asked
    of the Hub once per process (a command reads the model, its metrics and results)."""
    hub = _library()
    repo, revision = parse(spec)
    try:
        return Path(hub.snapshot_download(repo_id=repo, revision=revision,
                                          allow_patterns=FILES))
    except Exception as e:  # the library's errors: offline, not found, HTTP, ...
        name = type(e).__name__
        hint = {"RepositoryNotFoundError": "check the name, or log in (`hf auth login`) for a "
                                           "private model",
                "RevisionNotFoundError": "check the branch, tag or commit after @",
                "LocalEntryNotFoundError": "it is not in the local cache and the Hub cannot be "
                                           "reached (offline, or HF_HUB_OFFLINE=1)",
                "OfflineModeIsEnabled": "HF_HUB_OFFLINE=1 is set and it is not cached"}
        raise DataError(f"cannot get {spec} from the Hugging Face Hub ({name}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); "
                        f"{hint.get(name, 'check the connection and the name')}") from None


def cache_key(spec: str) -> str:
    """A folder name for what a user's commands write about a Hub model."""
    repo, revision = parse(spec)
    return repo.replace("/", "--") + (f"@{revision}" if revision else "")


def upload(folder: Path, repo_id: str, private: bool = False,
           message: str = "Upload a vaelab model") -> str:
    """Create the model repository (if needed) and upload ``folder``; returns its URL."""
    hub = _library()
    if not _REPO.match(repo_id):
        raise DataError(f"{repo_id!r} is not a repository name; write USER/REPO")
    try:
        api = hub.HfApi()
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=message)
    except Exception as e:
        raise DataError(f"cannot upload to {repo_id} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); log in with "
                        "`hf auth login` or set HF_TOKEN, and check the name") from None
    return str(url)
