"""`fastmta route ADDRESS|DOMAIN`: show where mail for it would go, and why, step by step.

Text on stdout, each part as soon as it is known (the rule that applied, the DNS walk in
the words of host(1), the addresses to try; with `--probe` each one's greeting and EHLO
extensions in the order of the candidates, each once it and those before it ended; the verdict and what to do about it), or one JSON object
with `--json` at the end.  Exit status: 0 routable, 1 permanent failure (the mail would
bounce), 75 transient (EX_TEMPFAIL: it would be deferred), 2 for a bad configuration, 64
(EX_USAGE) when the argument is not an address or a domain.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fastmta.tools.options import ROUTING_SETTINGS, add_setting_flags

EXIT_CONFIG = 2
EXIT_USAGE = os.EX_USAGE  # 64


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "route",
        help="show the next hop for an address or domain, step by step (debug delivery)",
        description="Show how fastmta routes mail for ADDRESS or DOMAIN, as the delivery "
        "workers would: transport map or relay host when one applies, otherwise the DNS "
        "walk (CNAMEs, MX records by preference, each exchanger's addresses, implicit MX, "
        "null MX, NXDOMAIN) and this host's place among the MX hosts.  Exit status: 0 "
        "routable, 1 permanent failure (the mail would bounce), 75 transient failure (it "
        "would wait in the queue), 2 bad configuration, 64 not an address or a domain.",
    )
    parser.add_argument("target", metavar="ADDRESS|DOMAIN",
                        help="user@example.com, example.com, or an address literal [192.0.2.1]")
    parser.add_argument("--probe", action="store_true",
                        help="also connect to each address on the outbound port and show its "
                        "greeting and EHLO extensions (EHLO and QUIT only: no mail is sent)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the text")
    add_setting_flags(parser, ROUTING_SETTINGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from fastmta.commands.serve import config_from_args
    from fastmta.config import ConfigError
    from fastmta.tools.route_report import build_report, target_problem

    problem = target_problem(args.target)
    if problem is not None:
        print(f"fastmta route: {problem}; give user@domain or a domain", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"fastmta route: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        report = asyncio.run(build_report(config, args.target, probe=args.probe))
        print(json.dumps(report.to_dict(), indent=2))
    else:  # line by line as it is known: a probe that hangs must not hide the DNS walk
        def show(line: str) -> None:
            print(line, flush=True)

        report = asyncio.run(build_report(config, args.target, probe=args.probe, show=show))
    return report.exit_status
