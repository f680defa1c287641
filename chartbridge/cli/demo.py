import json
import sys
from pathlib import Path

import click


@click.command("demo")
@click.option("--audio", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A 16 kHz mono WAV to play instead of the bundled visit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/demo"), show_default=True,
              help="Where the demo's database and keys live (recreated each run).")
@click.option("--hold", is_flag=True,
              help="Keep the engine and simulators up after the visit (Ctrl-C ends) so the pages can be opened.")
def demo(audio, as_json: bool, workdir: Path, hold: bool) -> None:
    """Run one whole Epic Haiku visit in-process against the Epic simulator."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from chartbridge.demo import run_demo

    err = Console(stderr=True)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), console=err,
                  transient=True) as bar:
        task = bar.add_task("chunks transcribed", total=None)

        def on_chunks(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = run_demo(workdir=workdir, audio=audio, progress=lambda m: err.print(f"• {m}"),
                          on_chunks=on_chunks, hold=hold)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        _summary(result)
    sys.exit(0 if result.ok else 1)


def _summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(width=None if sys.stdout.isatty() else 120)
    out.rule(f"Epic Haiku session {result.session_id}")
    for title, sections in (("Version 1 as handed to Epic", result.sections),
                            ("Version 2 (after the clinician's edit)", result.second_sections)):
        table = Table(title=title, show_lines=True)
        table.add_column("section")
        table.add_column("text", overflow="fold")
        for code, text in sections.items():
            table.add_row(code, text)
        out.print(table)
    ledger = Table(title="Write ledger")
    for col in ("target", "kind", "status", "attempts", "external id"):
        ledger.add_column(col)
    for row in result.ledger:
        ledger.add_row(row["target"], row["kind"], row["status"], str(row["attempts"]),
                       row["external_id"] or "")
    out.print(ledger)
    for name, t in result.targets.items():
        out.print(f"target {name}: {t['status']} ({t['external_id']})")
    out.print(f"edit protected in version 2: {'yes' if result.edit_survived else 'NO'}")
    out.print("timings: " + ", ".join(f"{k} {v} ms" for k, v in result.timings_ms.items()))
    for problem in result.problems:
        out.print(f"[red]problem:[/red] {problem}")
