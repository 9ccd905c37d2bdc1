"""`fastmta loadgen`: an SMTP load generator fast enough to measure fastmta and Postfix.

- `body`: the test message (realistic text of an exact size, dot-stuffing exercised).
- `session`: one client connection as an asyncio.Protocol sending prepared bytes.
- `stats`: latency histogram, per-process counters, and the merged report.
- `runner`: slots of sessions in one uvloop loop, or forked over several processes.

Entry point for code: `run_load(LoadSpec(host, port, ...)) -> Report`.
"""

from fastmta.loadgen.runner import LoadSpec, Progress, run_load
from fastmta.loadgen.stats import Report

__all__ = ["LoadSpec", "Progress", "Report", "run_load"]
