"""`fastmta serve`: start-up checks, then the pre-forking master (or one process).

Start-up, in this order, before any worker exists:
1. refuse root without --user on a public address; resolve --user/--group; load the
   TLS key and certificate and the aliases file (any problem: exit 2, a config error);
2. take the pid file (exit 1 if it names a live process);
3. bind every --listen address and the --metrics address, once (exit 1);
4. spool recovery (`Spool.recover()`: active/ back to the queue, tmp/ cleaned), and
   the spool handed to the worker user;
5. metrics on: a private PROMETHEUS_MULTIPROC_DIR the workers inherit;
6. `Supervisor.run()` forks N receive and M delivery workers and supervises them;
   with `--workers 0` everything runs in this process instead (`process.single`).
At exit the pid file and the metrics directory are removed."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable

from fastmta import metrics
from fastmta.config import SETTINGS, Config, ConfigError, load_config
from fastmta.process.logsetup import set_role, setup_logging
from fastmta.process.pidfile import PidFile, PidFileError
from fastmta.process.privileges import (
    Identity,
    PrivilegeError,
    give_spool_to,
    resolve_identity,
    root_refusal,
)
from fastmta.server.service import bind_listeners

log = logging.getLogger("fastmta.master")

EXIT_FAILURE = 1
EXIT_CONFIG = 2

# Settings a reload cannot change: the master bound, recovered or wrote them at start.
RESTART_ONLY = ("listen", "metrics", "spool", "pid_file", "user", "group")


def serve(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run fastmta until SIGTERM/SIGINT; returns the exit status.

    `reload` builds the new config on SIGHUP: it should re-read the config file and
    re-apply the flags given at start; without it, `file_reloader(config)` is used."""
    setup_logging()
    set_role("master" if config.workers > 0 else "single")
    refusal = root_refusal(config, os.geteuid())
    if refusal is not None:
        log.error("%s", refusal)
        return EXIT_CONFIG
    try:
        identity = resolve_identity(config, os.geteuid())
        tls_context = check_runtime(config)
    except (PrivilegeError, ConfigError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    pid_file = PidFile(config.pid_file) if config.pid_file is not None else None
    sockets: list[socket.socket] = []
    metrics_socket: socket.socket | None = None
    metrics_dir: str | None = None
    try:
        if pid_file is not None:
            pid_file.acquire()
        sockets = bind_listeners(config)
        if config.metrics is not None:
            from fastmta.process.metrics_http import bind_metrics

            metrics_socket = bind_metrics(config.metrics)
        prepare_spool(config, identity)
        if metrics_socket is not None:
            metrics_dir = tempfile.mkdtemp(prefix="fastmta-metrics-")
            if identity is not None and os.geteuid() == 0:
                os.chown(metrics_dir, identity.uid, identity.gid)
            metrics.enable(metrics_dir)
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening on %s", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        reloader = reload if reload is not None else file_reloader(config)
        if config.workers == 0:
            from fastmta.process.single import serve_single

            return serve_single(config, sockets, tls_context=tls_context, identity=identity,
                                reload_config=lambda current: reload_checked(reloader, current),
                                metrics_socket=metrics_socket, metrics_dir=metrics_dir)
        return _supervise(config, sockets, tls_context, identity,
                          lambda current: reload_checked(reloader, current),
                          metrics_socket, metrics_dir)
    except PidFileError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except PrivilegeError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except OSError as exc:  # bind failures name the address and say what to check
        log.error("%s", exc.strerror or exc)
        return EXIT_FAILURE
    finally:
        for sock in sockets:
            sock.close()
        if metrics_socket is not None:
            metrics_socket.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if pid_file is not None:
            pid_file.release()


def _supervise(config: Config, sockets: list[socket.socket], tls_context: ssl.SSLContext | None,
               identity: Identity | None,
               reload_config: Callable[[Config], tuple[Config, ssl.SSLContext | None]],
               metrics_socket: socket.socket | None, metrics_dir: str | None) -> int:
    from fastmta.process.supervisor import Supervisor

    if config.delivery_workers:
        # Loaded once here, so the forked delivery workers share it and start fast.
        import fastmta.delivery.worker  # noqa: F401

    render = None
    on_exit = None
    if metrics_socket is not None and metrics_dir is not None:
        from prometheus_client.multiprocess import mark_process_dead

        from fastmta.process.metrics_http import build_registry
        from fastmta.process.metrics_http import render as render_registry

        def render(status):  # type: ignore[no-untyped-def]
            registry = build_registry(metrics_dir, str(config.spool), status)
            return lambda: render_registry(registry)

        def on_exit(pid: int) -> None:
            mark_process_dead(pid, metrics_dir)

    supervisor = Supervisor(config, sockets, tls_context=tls_context, identity=identity,
                            reload_config=reload_config, metrics_socket=metrics_socket,
                            render_metrics=render, on_worker_exit=on_exit)
    if supervisor.metrics is not None:
        log.info("metrics on http://%s/metrics", supervisor.metrics.address)
    status = supervisor.run()
    log.info("stopped%s", "" if status == 0 else " (some workers had to be killed)")
    return status


def check_runtime(config: Config) -> ssl.SSLContext | None:
    """Load what the workers will need and a config parser cannot check: the TLS key
    and certificate (read here, as root, so the key may be readable by root only) and
    the aliases file.  Raises ConfigError naming the setting."""
    from fastmta.aliases import AliasesError, load_aliases

    if config.aliases_file is not None:
        try:
            load_aliases(config.aliases_file)
        except (AliasesError, OSError) as exc:
            raise ConfigError("aliases_file", str(exc)) from None
    if config.tls_cert is None or config.tls_key is None:
        return None
    from fastmta.server.tls import TLSConfigError, server_context

    try:
        return server_context(config.tls_cert, config.tls_key)
    except TLSConfigError as exc:
        raise ConfigError("tls_cert", str(exc)) from None


def prepare_spool(config: Config, identity: Identity | None) -> None:
    """Recover the spool after a crash, then give it to the worker user."""
    from fastmta.spool import Spool, SpoolError

    try:
        spool = Spool(config.spool, reuse_files=config.spool_reuse_files)
        try:
            report = spool.recover()
        finally:
            spool.close()
    except SpoolError as exc:
        raise OSError(0, f"spool {config.spool}: {exc}") from None
    log.info("spool %s recovered: %d tmp files removed, %d active messages requeued",
             config.spool, report.tmp_removed, report.to_incoming + report.to_deferred)
    if identity is not None and os.geteuid() == 0:
        tops = [config.spool]
        if not config.mail_root.resolve().is_relative_to(config.spool.resolve()):
            tops.append(config.mail_root)
        give_spool_to(identity, tops)


def reload_checked(reloader: Callable[[], Config], current: Config,
                   ) -> tuple[Config, ssl.SSLContext | None]:
    """The config for a reload, with the restart-only settings kept (and logged)."""
    new = reloader()
    kept = {}
    for name in RESTART_ONLY:
        old_value, new_value = getattr(current, name), getattr(new, name)
        if old_value != new_value:
            kept[name] = old_value
            if name == "listen":
                log.warning("reload: the listen addresses cannot change without a restart: still "
                            "listening on %s; restart fastmta to listen on %s",
                            ", ".join(old_value), ", ".join(new_value))
            else:
                log.warning("reload: %s changed from %s to %s; that takes a restart, keeping %s",
                            name, old_value, new_value, old_value)
    if kept:
        new = new.replace(**kept)
    return new, check_runtime(new)


def file_reloader(config: Config) -> Callable[[], Config]:
    """Re-read the config file, re-applying what the command line changed at start.

    Used when the caller gave no reloader: flags are told apart from file values by
    comparing with the file alone at start (a flag that repeats the file's value is
    seen as not given)."""
    from fastmta.delivery.routing import check_routing_config

    try:
        from_file: Config | None = load_config(config.config_file)
    except ConfigError:
        from_file = None
    overrides = {}
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if from_file is None or value != getattr(from_file, setting.name):
            overrides[setting.name] = _raw(value)

    def reload() -> Config:
        new = load_config(config.config_file, overrides)
        check_routing_config(new)
        return new

    return reload


def _raw(value: object) -> object:
    """A parsed setting back in a form its parser accepts."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "items"):
        return dict(value.items())  # type: ignore[attr-defined]
    return value
