"""`fastmta serve`: run the MTA (master, receive workers, delivery workers).

Every setting in fastmta.config.SETTINGS is a flag here (`--max-message-size`,
`--listen` repeatable, booleans as `--vrfy/--no-vrfy`); `--config FILE` reads a TOML
file first and flags win over it.  A bad setting prints one line naming it and
exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fastmta.config import SETTINGS, Config, ConfigError, load_config

EXIT_CONFIG = 2


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Declare one flag per setting; values stay raw strings until load_config parses them."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings (flags win over it)")
    for setting in SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        default_text = "" if setting.default in (None, (), {}) else f" [default: {_show(setting.default)}]"
        if setting.default is False or setting.default is True:
            parser.add_argument(flag, dest=setting.name, action=argparse.BooleanOptionalAction,
                                default=None, help=setting.help + default_text)
        elif setting.repeatable:
            parser.add_argument(flag, dest=setting.name, action="append", default=None,
                                metavar=setting.metavar, help=setting.help + default_text)
        else:
            parser.add_argument(flag, dest=setting.name, default=None, metavar=setting.metavar,
                                help=setting.help + default_text)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    if hasattr(value, "items"):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def config_from_args(args: argparse.Namespace) -> Config:
    """The validated config: settings parsed, and the routing tables checked too."""
    from fastmta.delivery.routing import check_routing_config

    overrides = {setting.name: getattr(args, setting.name, None) for setting in SETTINGS}
    config = load_config(args.config, overrides)
    check_routing_config(config)
    check_policy_config(config)
    return config


def check_policy_config(config: Config) -> None:
    """Refuse settings the recipient policy rejects (an open relay, a bad catch-all)."""
    from fastmta.policy import RecipientPolicy

    try:
        RecipientPolicy.from_config(config, None)
    except ValueError as exc:
        setting, sep, message = str(exc).partition(": ")
        if not sep or setting not in {s.name for s in SETTINGS}:
            setting, message = "local_domains", str(exc)
        raise ConfigError(setting, message) from None


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the MTA: accept mail over SMTP and deliver it",
        description="Run fastmta: a master process that binds the listening sockets, "
        "pre-forks receive workers and delivery workers, and supervises them.",
    )
    add_setting_flags(parser)
    parser.add_argument("--foreground", action="store_true", default=True,
                        help="stay in the foreground (the default; use a service manager to daemonise)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it, and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"fastmta: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        for setting in SETTINGS:
            print(f"{setting.name} = {_show(getattr(config, setting.name))}")
        return 0
    from fastmta.master import serve

    return serve(config, reload=lambda: config_from_args(args))
