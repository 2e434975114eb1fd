"""A small Python client for the tvprompt service (needs ``httpx``, part of the ``serve`` extra).

    from tvprompt.client import PromptClient

    with PromptClient("http://127.0.0.1:8000", token="tvp_...") as client:
        prompts = client.list(task="shapes-color")
        client.pull(prompts[0]["id"], "prompt/")           # a local, validated prompt directory
        png = client.apply(prompts[0]["id"], "photo.jpg")  # PNG bytes, as `tvp apply` writes
        meta = client.push("my-prompt/", name="shapes")   # needs a token
        job = client.submit_job(method="tvp", sources=["zoo:a"], task="shapes-color", dataset="shapes/train.jsonl")
        job = client.wait_job(job["id"])
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from .errors import TvpError, UsageError
from .files import atomic_dir


class ServiceError(TvpError):
    """The service refused a call (``status`` holds the HTTP status) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PromptClient:
    """Talks to ``tvp serve``. Reads need no token; push, delete and jobs do."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, transport: Any = None) -> None:
        try:
            import httpx
        except ModuleNotFoundError:
            raise UsageError("the client needs httpx: pip install 'tvprompt[serve]'") from None
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"service URL {url!r}: must start with http:// or https://")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PromptClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, **kwargs: Any):
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ServiceError(f"{self.url}: cannot reach the service ({type(e).__name__}: {e})") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text[:200]
            raise ServiceError(f"{method} {path}: HTTP {response.status_code}: {detail}", status=response.status_code)
        return response

    # ------------------------------------------------------------------ prompts
    def list(
        self, task: str | None = None, model: str | None = None, owner: str | None = None, name: str | None = None,
        limit: int = 100, offset: int = 0,
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"task": task, "model": model, "owner": owner, "name": name}.items() if v}
        return self._request("GET", "/prompts", params={**params, "limit": limit, "offset": offset}).json()

    def get(self, prompt_id: str) -> dict[str, Any]:
        return self._request("GET", f"/prompts/{prompt_id}").json()

    def download(self, prompt_id: str) -> bytes:
        """The prompt archive (zip), checked against the sha256 the server reports."""
        response = self._request("GET", f"/prompts/{prompt_id}/download")
        data = response.content
        expected = response.headers.get("x-content-sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ServiceError(f"prompt {prompt_id}: download is corrupt (sha256 mismatch); try again")
        return data

    def pull(self, prompt_id: str, output: str | os.PathLike, overwrite: bool = False) -> Path:
        """Download a prompt into ``output`` (atomically), validated like any local prompt directory."""
        from .prompt import VisualPrompt
        from .serve.archive import ArchiveLimits, read_archive, write_members

        output = Path(output)
        if output.exists() and not overwrite:
            raise TvpError(f"{output}: exists; pass overwrite=True (--overwrite) to replace it")
        members = read_archive(self.download(prompt_id), ArchiveLimits())
        with atomic_dir(output) as tmp:
            write_members(members, tmp)
            VisualPrompt.from_pretrained(tmp)
        return output

    def push(self, directory: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
        """Upload a local prompt directory (validated locally first). Returns the registered metadata."""
        from .prompt import VisualPrompt
        from .serve.archive import pack_dir

        VisualPrompt.from_pretrained(directory)
        data = pack_dir(directory)
        form = {"name": name} if name else {}
        return self._request("POST", "/prompts", files={"file": ("prompt.zip", data, "application/zip")},
                             data=form).json()

    def delete(self, prompt_id: str) -> None:
        self._request("DELETE", f"/prompts/{prompt_id}")

    def apply(self, prompt_id: str, image: str | os.PathLike | bytes) -> bytes:
        """Send one image; returns the prompted PNG's bytes."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return self._request("POST", f"/prompts/{prompt_id}/apply", files={"image": ("image", data)}).content

    # ------------------------------------------------------------------ jobs
    def submit_job(
        self, method: str, sources: list[str], task: str | None = None, dataset: str | None = None,
        guide: str | None = None,
        steps: int | None = None, batch_size: int | None = None, seed: int | None = None, name: str | None = None,
        dataset_id: str | None = None,
    ) -> dict[str, Any]:
        """A job on a manifest under the server's data root (``task`` + ``dataset``) or on an upload
        (``dataset_id``)."""
        body = {"method": method, "sources": list(sources), "task": task, "dataset": dataset, "guide": guide,
                "steps": steps, "batch_size": batch_size, "seed": seed, "name": name, "dataset_id": dataset_id}
        return self._request("POST", "/jobs", json={k: v for k, v in body.items() if v is not None}).json()

    # ------------------------------------------------------------------ uploaded datasets
    def upload_dataset(
        self, archive: str | os.PathLike | bytes, name: str, instruction: str | None = None,
        choices: list[str] | None = None,
    ) -> dict[str, Any]:
        """Upload a zip of labelled images (with manifest.jsonl, or one folder per class) and its task spec."""
        import json

        data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
        form = {"name": name}
        if instruction:
            form["instruction"] = instruction
        if choices:
            form["choices"] = json.dumps(list(choices))
        return self._request("POST", "/datasets", files={"file": ("dataset.zip", data, "application/zip")},
                             data=form).json()

    def datasets(self) -> list[dict[str, Any]]:
        return self._request("GET", "/datasets").json()

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/datasets/{dataset_id}")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def wait_job(self, job_id: str, timeout: float = 24 * 3600.0, poll_s: float = 1.0) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled; returns its final state."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise ServiceError(f"job {job_id}: still {job['state']} after {timeout:g} s")
            time.sleep(poll_s)
