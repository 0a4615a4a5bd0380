"""The ``hpcgate`` command: serve the API, mint local tokens, configure the local site."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hpcgate.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def run_server(app: FastAPI, settings: Settings, *, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn the way ``hpcgate serve`` does, in one process: its own
    logging, the request head bounded in size and time (``hpcgate.api.serving``)."""
    import uvicorn

    from hpcgate.api.serving import uvicorn_options
    from hpcgate.operations.logs import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(app, host=host, port=port, **uvicorn_options(settings))


def _serve(args: argparse.Namespace) -> int:
    from hpcgate.api.app import create_app

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"hpcgate: {exc}", file=sys.stderr)
        return 2
    if args.workers is None:
        from hpcgate.api.serving import default_workers

        args.workers = default_workers()
    workers: int = args.workers
    if workers < 1:
        print("hpcgate: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1:
        from hpcgate.api.serving import WorkersRefused, serve_workers

        try:
            return serve_workers(args.config, settings, host=args.host, port=args.port,
                                 workers=workers)  # fmt: skip
        except WorkersRefused as exc:
            print(f"hpcgate: {exc}", file=sys.stderr)
            return 2
    run_server(create_app(settings), settings, host=args.host, port=args.port)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"hpcgate: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(system.name for system in settings.systems)
    print(f"{args.config}: valid ({len(settings.systems)} system(s): {names})")
    return 0


def _read_site_env(path: str) -> dict[str, str]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def local_site_config(site: dict[str, str], key_dir: Path) -> dict[str, object]:
    """A configuration serving the local site (deploy/local/site env) with local tokens."""
    from hpcgate.auth.localauth import create_signing_key

    issuer = create_signing_key(key_dir)
    fs_root = site["HPC_SITE_FS_ROOT"]
    return {
        "auth": {
            "issuer": issuer.issuer,
            "audience": issuer.audience,
            "jwks_file": str(issuer.jwks_path),
        },
        "systems": [
            {
                "name": site["HPC_SITE_CLUSTER"],
                "ssh": {
                    "host": site["HPC_SITE_SSH_HOST"],
                    "port": int(site["HPC_SITE_SSH_PORT"]),
                    "known_hosts": site["HPC_SITE_SSH_KNOWN_HOSTS"],
                },
                "credentials": {"kind": "ca", "ca_key": site["HPC_SITE_SSH_CA_KEY"]},
                "scheduler": {
                    "type": "slurm",
                    "transfer_partition": site["HPC_SITE_XFER_PARTITION"],
                },
                "service_user": site["HPC_SITE_SERVICE_USER"],
                # the site's people have uids from 1000 (id hpcuser1: 1001); uids are
                # looked up as the service user, never in the caller's own shell
                "accounts": {"source": "service", "min_uid": 1000, "max_uid": 60000},
                "filesystems": [
                    {
                        # a second site on the host shares the first one's homes
                        "path": site.get("HPC_SITE_HOME_ROOT", f"{fs_root}/home"),
                        "data_type": "users",
                        "default_work_dir": True,
                    },
                    {"path": f"{fs_root}/scratch", "data_type": "scratch"},
                    {"path": f"{fs_root}/project", "data_type": "project"},
                ],
            }
        ],
    }


def _local_config(args: argparse.Namespace) -> int:
    config = local_site_config(_read_site_env(args.site_env), Path(args.key_dir))
    text = yaml.safe_dump(config, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API server")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (default: one per core). They share "
        "state through the state directory, or the Redis store when configured; "
        "see hpcgate.api.serving",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("--config", required=True)
    check.set_defaults(handler=_check_config)

    local = commands.add_parser(
        "local-config", help="write a configuration for the local site (deploy/local/site)"
    )
    local.add_argument("--site-env", default="-", help="output of `site env` (file or -)")
    local.add_argument("--key-dir", required=True, help="where the local token key lives")
    local.add_argument("--output", default="-")
    local.set_defaults(handler=_local_config)

    commands.add_parser("token", help="mint a token from the local signing key", add_help=False)
    commands.add_parser("keygen", help="create the local signing key", add_help=False)

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("token", "keygen"):
        from hpcgate.auth import localauth

        command = localauth.token_command if argv[0] == "token" else localauth.keygen_command
        return command(argv[1:])
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
