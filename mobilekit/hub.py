"""`mobilekit push`: a bundle to the Hugging Face Hub, model card included (huggingface_hub's
create_repo + upload_folder). The bundle is checked first (manifest schema, every file's
sha256), so what lands on the Hub is what validation saw."""

from __future__ import annotations

from pathlib import Path

from mobilekit import bundle, card
from mobilekit.errors import HubError


def commit_message(manifest: dict) -> str:
    validation = manifest.get("validation") or {}
    verdict = ("validation passed" if validation.get("passed") else "validation FAILED") \
        if validation.get("performed") else "not validated"
    source = manifest.get("recipe") or (manifest.get("checkpoint") or {}).get("repo") or "a checkpoint"
    return f"mobilekit: {source}, {manifest.get('target')} {manifest.get('quant')}, {verdict}"


def push(bundle_dir: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload `bundle_dir` to the model repo `repo_id` (created if missing); returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    manifest = bundle.read_manifest(bundle_dir)
    bundle.verify_files(bundle_dir, manifest)
    (Path(bundle_dir) / card.CARD).write_text(card.model_card(manifest))  # bundles from before cards had none
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(bundle_dir), repo_id=repo_id, repo_type="model",
                          commit_message=commit_message(manifest))
    except OfflineModeIsEnabled as e:
        raise HubError(f"cannot push {repo_id}: HF_HUB_OFFLINE is set; unset it to upload") from e
    except HFValidationError as e:
        raise HubError(f"{repo_id!r} is not a Hub repo id: use OWNER/NAME ({e})") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"the Hub refused to write {repo_id} (HTTP {status}): log in with `hf auth login` or set "
                           "HF_TOKEN to a token with write access to that owner") from e
        raise HubError(f"the Hub answered HTTP {status} for {repo_id}: {str(e).splitlines()[0][:200]}") from e
    except OSError as e:  # connection refused, DNS, TLS: the machine cannot reach the endpoint
        raise HubError(f"cannot reach the Hugging Face Hub ({api.endpoint}): {e}. Check the network or HF_ENDPOINT") from e
    except Exception as e:
        # huggingface_hub 1.x+ talks through httpx, whose transport errors are not OSErrors
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise HubError(f"cannot reach the Hugging Face Hub ({api.endpoint}): {e}. "
                           "Check the network or HF_ENDPOINT") from e
        raise
    return str(url)
