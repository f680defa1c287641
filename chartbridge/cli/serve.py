import logging
import signal
import threading

import click

from chartbridge.cli.options import queue_option, sweeper_option


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="CHARTBRIDGE_HOST")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int, envvar="CHARTBRIDGE_WEB_THREADS",
              help="HTTP (WSGI) threads (env CHARTBRIDGE_WEB_THREADS).")
@click.option("--worker-threads", default=2, show_default=True, type=int,
              help="In-process job threads (embedded broker only).")
# -- hardening (issue 20) ----------------------------------------------------------------
@click.option("--public-url", envvar="CHARTBRIDGE_PUBLIC_URL", default=None,
              help="The engine's public base URL (e.g. https://chartbridge.example.org): "
                   "redirect_uri, Epic's token audience and cookie Secure come from it, never "
                   "from the request's Host. Default: the address served on.")
@click.option("--trusted-proxies", envvar="CHARTBRIDGE_TRUSTED_PROXIES", default=0,
              show_default=True, type=click.IntRange(0, 5),
              help="How many reverse proxies in front set X-Forwarded-* (0: trust none).")
@queue_option
@sweeper_option
def serve(host: str, port: int, threads: int, worker_threads: int, queue: str,
          sweeper: bool, public_url: str | None, trusted_proxies: int) -> None:
    """Run the engine: the web app on waitress, plus the in-process worker and sweeper when
    no CHARTBRIDGE_BROKER_URL is set (the embedded default)."""
    from waitress.server import create_server

    from chartbridge import runtime
    from chartbridge.bootstrap import bootstrap
    from chartbridge.logs import configure_logging
    from chartbridge.web import create_app

    configure_logging()
    engine = bootstrap()
    rt = runtime.start(engine, worker_threads=worker_threads, queue=queue, sweeper=sweeper)
    app = create_app(engine, jobs=rt.jobs, trusted_proxies=trusted_proxies)
    from chartbridge.web import MAX_BODY_BYTES
    server = create_server(app, host=host, port=port, threads=threads,
                           max_request_header_size=64 * 1024,     # waitress's default: 256 KB
                           max_request_body_size=MAX_BODY_BYTES)
    app.config["CHARTBRIDGE_PUBLIC_URL"] = _public_url(public_url, host,
                                                       server.effective_port)
    click.echo(f"chartbridge serving on http://{host}:{server.effective_port} "
               f"({threads} WSGI threads, database: {engine.db.engine.dialect.name}, "
               f"worker: {'in-process' if rt.worker else 'external'})")
    stop = threading.Event()

    def _shutdown(*_):
        stop.set()
        server.close()
    signal.signal(signal.SIGTERM, _shutdown)
    try:
        server.run()
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        rt.stop()
        logging.getLogger("chartbridge").info("stopped")


def _public_url(given: str | None, host: str, port: int) -> str:
    from urllib.parse import urlsplit

    if given:
        parts = urlsplit(given)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise click.BadParameter("must be an absolute http(s) URL", param_hint="--public-url")
        return given.rstrip("/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"
