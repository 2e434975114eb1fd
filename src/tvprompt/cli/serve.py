"""`tvp serve` (run the service; `tvp serve token ...` manages tokens), `tvp pull`, `tvp push`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import UsageError

TOKEN_ENV = "TVP_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the Prompt-as-a-Service HTTP server; `serve token` manages tokens")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _store_args(p)
    p.add_argument("--data-root", help="folder of dataset manifests that jobs may train on (jobs off without it)")
    p.add_argument("--max-jobs", type=int, default=1, help="training jobs run at once (default 1)")
    p.add_argument("--apply-rate", type=float, default=120.0, help="apply calls per minute per client (default 120)")
    p.add_argument("--allow-model", action="append", metavar="ID", help="model id jobs may use (repeat; default any)")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="allow browser calls from ORIGIN (default: CORS off)")
    p.add_argument("--forwarded-allow-ips", default="", metavar="IPS",
                   help="comma-separated proxy addresses whose X-Forwarded-For is trusted (default: none, "
                        "the client is the TCP peer)")
    p.add_argument("--model", action="append", metavar="ID", help="host this model for `ask` in the web front (repeat)")
    p.add_argument("--model-device", help="device of the hosted models (default: CUDA when available, else CPU)")
    p.add_argument("--demo", action="store_true",
                   help="host the zoo models and register small ShapeWorld demo prompts (built at the first start, "
                        "then cached)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)
    ssub = p.add_subparsers(dest="serve_command", metavar="SUBCOMMAND")
    t = ssub.add_parser("token", help="create, list or revoke API tokens")
    tsub = t.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tc = tsub.add_parser("create", help="create a token for an owner and print it (once: it is stored hashed)")
    tc.add_argument("--owner", required=True, help="owner name the token acts for")
    _store_args(tc)
    tc.set_defaults(func=cmd_token_create)
    tl = tsub.add_parser("list", help="list token ids and owners (never the tokens)")
    _store_args(tl)
    tl.set_defaults(func=cmd_token_list)
    tr = tsub.add_parser("revoke", help="revoke a token by its id")
    tr.add_argument("token_id", metavar="TOKEN_ID")
    _store_args(tr)
    tr.set_defaults(func=cmd_token_revoke)

    p = sub.add_parser("pull", help="download a prompt from a service into a local prompt directory")
    p.add_argument("url", metavar="URL", help="service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("prompt_id", metavar="PROMPT_ID")
    p.add_argument("--output", required=True, help="prompt directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="upload a local prompt directory to a service")
    p.add_argument("url", metavar="URL", help="service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("directory", metavar="DIR", help="prompt directory")
    p.add_argument("--token", help=f"API token (default: ${TOKEN_ENV})")
    p.add_argument("--name", help="registry name (default: the prompt's task)")
    p.set_defaults(func=cmd_push)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="tvp-store", help="prompt store folder (default ./tvp-store)")
    p.add_argument("--db", help="registry URL: sqlite:///FILE (default STORE/registry.db) or postgresql://...")


def _settings(args: argparse.Namespace, **extra):
    from ..serve.settings import Settings

    return Settings(store_dir=args.store, db_url=args.db, **extra)


def _need_serve_extra() -> None:
    import importlib

    for module in ("fastapi", "uvicorn", "sqlalchemy", "multipart", "httpx"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise UsageError(f"needs the 'serve' extra ({module} is missing): pip install 'tvprompt[serve]'") from None


def _sessions(args: argparse.Namespace):
    _need_serve_extra()
    from ..serve.db import open_engine, session_factory

    return session_factory(open_engine(_settings(args).db_url))


def cmd_serve(args: argparse.Namespace) -> int:
    _need_serve_extra()
    from ..serve import create_app

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be in 1..65535")
    settings = _settings(
        args,
        data_root=args.data_root,
        max_concurrent_jobs=args.max_jobs,
        apply_rate_per_minute=args.apply_rate,
        allowed_models=args.allow_model,
        cors_origins=args.cors_origin or [],
        forwarded_allow_ips=[ip.strip() for ip in args.forwarded_allow_ips.split(",") if ip.strip()],
        **_front_settings(args),
    )
    from ..serve.server import run

    run(create_app(settings), settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _front_settings(args: argparse.Namespace) -> dict:
    models = list(args.model or [])
    if args.demo and not models:
        from ..serve.demo import demo_models

        models = demo_models()
        if not models:
            raise UsageError("--demo needs the model zoo, and this installation has none: run `tvp zoo build`")
    from ..models.registry import resolve_source

    for model_id in models:  # a bad id fails here in one line, not inside the server's start-up
        resolve_source(model_id)
    return {"hosted_models": models, "model_device": args.model_device, "demo": args.demo}


def cmd_token_create(args: argparse.Namespace) -> int:
    sessions = _sessions(args)
    from ..serve.auth import create_token

    token_id, token = create_token(sessions, args.owner)
    print(token)
    print(f"token {token_id} for owner {args.owner!r}: shown once, stored hashed; keep it secret", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    sessions = _sessions(args)
    from ..serve.auth import list_tokens

    for row in list_tokens(sessions):
        print(f"{row.id}  {row.owner}  {row.created_at}{'  revoked' if row.revoked else ''}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    sessions = _sessions(args)
    from ..errors import TvpError
    from ..serve.auth import revoke_token

    if not revoke_token(sessions, args.token_id):
        raise TvpError(f"token {args.token_id!r}: no such token id (see `tvp serve token list`)")
    print(f"revoked {args.token_id}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ..client import PromptClient

    with PromptClient(args.url) as client:
        path = client.pull(args.prompt_id, args.output, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from ..client import PromptClient

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise UsageError(f"push needs a token: pass --token or set ${TOKEN_ENV}")
    with PromptClient(args.url, token=token) as client:
        meta = client.push(args.directory, name=args.name)
    print(json.dumps({k: meta[k] for k in ("id", "name", "version", "sha256")}))
    return 0
