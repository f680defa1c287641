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
@queue_option
@sweeper_option
def serve(host: str, port: int, threads: int, worker_threads: int, queue: str,
          sweeper: bool) -> None:
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
    app = create_app(engine, jobs=rt.jobs)
    server = create_server(app, host=host, port=port, threads=threads)
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
