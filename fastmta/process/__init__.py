"""The process model: one master, N receive workers, M delivery workers.

- `supervisor.Supervisor`: the master's loop (selectors + signal wakeup pipe, no
  threads, because it forks): starts, watches, replaces and stops workers; reloads
  on SIGHUP; serves metrics.
- `children`: what a forked child does before it runs its entry point.
- `single`: `--workers 0`, everything in one process and one loop, for debugging.
- `privileges`, `pidfile`, `logsetup`, `osutil`, `metrics_http`: the pieces.

The master does no per-message work: it never reads from a client or the spool
(it only counts spool files at scrape time).
"""
