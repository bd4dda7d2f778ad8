"""The ``calyx`` command: ``serve``, ``config``, ``cleanup`` and ``version``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cri import __version__, configdocs
from cri import config as config_mod


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calyx", description="Calyx, a Kubernetes container runtime (CRI v1)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=config_mod.DEFAULT_CONFIG_FILE, help="main config file")
        p.add_argument("--config-dir", type=Path, default=config_mod.DEFAULT_DROPIN_DIR, help="drop-in dir")
        p.add_argument("--socket", help="CRI socket path (server.socket)")
        p.add_argument("--root", help="persistent state dir (state.root)")
        p.add_argument("--run-root", help="volatile state dir (state.run_root)")
        p.add_argument("--log-level", help="debug, info, warning or error (server.log_level)")
        p.add_argument("--cgroup-driver", choices=["systemd", "cgroupfs"], help="cgroup.driver")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any option, e.g. --set network.bridge=cni0 (repeatable; applied last)",
        )

    add_config_flags(sub.add_parser("serve", help="run the daemon"))
    cfg = sub.add_parser("config", help="print the effective config as TOML")
    add_config_flags(cfg)
    group = cfg.add_mutually_exclusive_group()
    group.add_argument("--defaults", action="store_true", help="print every option, its default and its doc")
    group.add_argument("--reference", action="store_true", help="print the option reference as Markdown")
    cfg.add_argument(
        "--show-secrets",
        action="store_true",
        help="print registry passwords and other secrets instead of (redacted)",
    )
    cleanup = sub.add_parser(
        "cleanup",
        help="remove the built-in network's bridge, chains and rules (kept while the daemon runs pods)",
        description="Remove the bridge, the iptables and ip6tables chains and the rules of the configured"
        " built-in network (network.bridge). Refused while pods use it, unless --force.",
    )
    add_config_flags(cleanup)
    cleanup.add_argument("--force", action="store_true", help="remove it even while pods use it")
    sub.add_parser("version", help="print the version")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "server.socket": args.socket,
        "state.root": args.root,
        "state.run_root": args.run_root,
        "server.log_level": args.log_level,
        "cgroup.driver": args.cgroup_driver,
    }
    out = [f'{key}="{value}"' for key, value in flags.items() if value is not None]
    return out + list(args.set)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"calyx {__version__} (CRI v1)")
        return 0
    if args.command == "config" and args.defaults:
        print(configdocs.defaults_toml(), end="")
        return 0
    if args.command == "config" and args.reference:
        print(configdocs.reference_table())
        return 0
    try:
        config = config_mod.load(args.config, args.config_dir, _overrides(args))
    except config_mod.ConfigError as exc:
        print(f"calyx: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":  # secrets stay out of terminals, scrollback and pasted bug reports
        print(configdocs.to_toml(config, show_secrets=args.show_secrets), end="")
        return 0
    if args.command == "cleanup":
        return _cleanup(config, args.force)
    from cri.daemon import StartupError, serve

    def load_again() -> config_mod.Config:  # SIGHUP: the same files and flags as at start
        return config_mod.load(args.config, args.config_dir, _overrides(args))

    try:
        return serve(config, load_again)
    except StartupError as exc:
        print(f"calyx: {exc}", file=sys.stderr)
        return 1


def _cleanup(config: config_mod.Config, force: bool) -> int:
    """``calyx cleanup``: the built-in network's shared parts go (sandbox.bridge.cleanup_network). The
    store, when there is one, says which pods hold addresses on it; none is made when there is not."""
    from calyx_base.errors import CalyxError
    from cri.store import Store
    from sandbox.bridge import cleanup_network

    db = config.root / "calyx.db"
    store = Store(db) if db.exists() else None
    bridge = config.network.bridge
    try:
        removed = cleanup_network(bridge, store, force)
    except CalyxError as exc:
        print(f"calyx: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    for item in removed:
        print(f"removed {item}")
    if not removed:
        print(f"nothing of the built-in network on bridge {bridge} was left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
