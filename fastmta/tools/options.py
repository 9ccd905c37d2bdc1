"""The configuration flags `fastmta route` and `fastmta sendmail` share with `fastmta serve`.

Only the settings that change where mail goes are flags here (the rest come from
`--config`); each is declared from its entry in fastmta.config.SETTINGS, so the name,
help and parsing are the ones `serve` uses, and `fastmta.commands.serve.config_from_args`
builds the Config from them.
"""

from __future__ import annotations

import argparse

from fastmta.config import SETTINGS, Config

__all__ = ["ROUTING_SETTINGS", "add_setting_flags", "own_addresses"]

ROUTING_SETTINGS = ("hostname", "local_domains", "relay_host", "transport_map",
                    "dns_nameservers", "dns_timeout", "outbound_port", "connect_timeout")


def add_setting_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """`--config FILE` and one flag per named setting; values stay raw until loading."""
    parser.add_argument("--config", metavar="FILE",
                        help="the TOML file `fastmta serve` uses (flags win over it)")
    group = parser.add_argument_group("settings (as for `fastmta serve`)")
    for setting in SETTINGS:
        if setting.name not in names:
            continue
        flag = "--" + setting.name.replace("_", "-")
        group.add_argument(flag, dest=setting.name, default=None, metavar=setting.metavar,
                           action="append" if setting.repeatable else "store",
                           help=setting.help)


def own_addresses(config: Config) -> list[str]:
    """Addresses at which a next hop would be this host, as the delivery worker computes
    them (fastmta.delivery.worker): listen addresses on the outbound port, wildcards
    excluded.  Kept equal so that `fastmta route` shows what delivery will do."""
    return [host for host, port in config.listen_addresses
            if port == config.outbound_port and host not in ("0.0.0.0", "::")]
