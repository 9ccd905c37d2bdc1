"""Subcommands of the `fastmta` CLI, one module each (see fastmta.cli)."""
