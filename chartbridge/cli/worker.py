import signal
import threading

import click

from chartbridge.cli.options import queue_option, sweeper_option
from chartbridge.core.errors import ConfigError


@click.command("worker")
@click.option("--threads", default=4, show_default=True, type=int, envvar="CHARTBRIDGE_WORKER_THREADS",
              help="Job threads (env CHARTBRIDGE_WORKER_THREADS).")
@queue_option
@sweeper_option
def worker(threads: int, queue: str, sweeper: bool) -> None:
    """Run job workers against CHARTBRIDGE_BROKER_URL (redis:// or amqp://)."""
    from chartbridge.settings import load_settings

    url = load_settings().broker_url
    if not (url.startswith("redis://") or url.startswith("amqp://")):
        raise ConfigError("chartbridge worker needs CHARTBRIDGE_BROKER_URL set to a redis:// or "
                          "amqp:// URL; the embedded default runs its worker inside `serve`")
    from chartbridge import runtime
    from chartbridge.bootstrap import bootstrap
    from chartbridge.logs import configure_logging

    configure_logging()
    rt = runtime.start(bootstrap(), broker_url=url, in_process_worker=True, worker_threads=threads,
                       queue=queue, sweeper=sweeper)
    click.echo(f"chartbridge worker running ({threads} threads)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        rt.stop()
