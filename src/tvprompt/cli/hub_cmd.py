"""`tvp push-to-hub`: upload a prompt directory to the Hugging Face Hub (with its model card)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 12


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push-to-hub", help="upload a prompt to the Hugging Face Hub (user/name), model card included",
                       description="Validate a prompt and upload it to a Hub model repository (created if needed). "
                                   "Load it back anywhere with --prompt user/name or VisualPrompt.from_pretrained.")
    p.add_argument("prompt", metavar="PROMPT", help="prompt directory (or Hub repo id)")
    p.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, user/name or org/name")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="BRANCH", help="branch to upload to (default: main)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument("--results", metavar="FILE",
                   help="a `tvp eval` results.json (or its folder): puts this prompt's transfer table in the card")
    p.add_argument("--name", help="the prompt's name in --results (default: its own name, e.g. tvp@llava-p8)")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..prompt import VisualPrompt, display_name, transfer_from_results

    prompt = VisualPrompt.from_pretrained(args.prompt)
    transfer = None
    if args.results:
        path = Path(args.results)
        path = path / "results.json" if path.is_dir() else path
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"{path}: not a readable results.json ({e})") from None
        transfer = transfer_from_results(results, args.name or display_name(prompt.config))
    url = prompt.push_to_hub(args.repo_id, private=args.private or None, token=args.token,
                             revision=args.revision, commit_message=args.message, transfer=transfer)
    print(f"pushed {args.prompt} to {url}")
    return 0
