import json
import sys
from pathlib import Path

import click


def _say(message: str) -> None:
    """One progress line on stderr, flushed at once and never wrapped: it reads the same in
    a terminal, a CI log or a pipe, and a URL in it stays one piece."""
    click.echo(f"• {message}", err=True)


@click.command("demo")
@click.option("--audio", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A 16 kHz mono WAV to play instead of the bundled visit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/demo"), show_default=True,
              help="Where the demo's database and keys live (recreated each run).")
@click.option("--hold", is_flag=True,
              help="Keep the engine and simulators up after the visit (Ctrl-C ends) so the "
                   "pages can be opened; the second site's draft then waits for a person on "
                   "its review page.")
@click.option("--auto-approve", is_flag=True,
              help="With --hold: the demo clinician approves the second site's draft at once "
                   "instead of leaving it on the review page.")
def demo(audio, as_json: bool, workdir: Path, hold: bool, auto_approve: bool) -> None:
    """Run one whole Epic Haiku visit in-process against the Epic simulator."""
    from chartbridge.demo import run_demo

    seen = {"done": -1}

    def on_chunks(done: int, total: int) -> None:
        if done != seen["done"]:
            seen["done"] = done
            _say(f"chunk {done}/{total} transcribed")

    result = run_demo(workdir=workdir, audio=audio, progress=_say, on_chunks=on_chunks,
                      hold=hold, auto_approve=auto_approve or not hold)
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
        ledger.add_row(row["target"], str(row["kind"]), row["status"], str(row["attempts"]),
                       row["external_id"] or "")
    out.print(ledger)
    out.rule("Summary")
    # plain lines from here on: a person reads them last, and URLs must not be wrapped
    click.echo(f"Epic Haiku visit {result.session_id}: {len(result.sections)} sections handed "
               f"back; the clinician's edit was {'kept' if result.edit_survived else 'OVERWRITTEN'} "
               "in version 2")
    for name, t in result.targets.items():
        click.echo(f"  {name:<11} {t['status']:<22} {t.get('external_id') or ''}")
    click.echo("timings: " + ", ".join(f"{k} {v / 1000:.1f} s" for k, v in result.timings_ms.items()))
    if result.pages and not result.held:
        click.echo("pages (up only while the demo runs; `chartbridge demo --hold` keeps them):")
    for name, url in result.pages.items():
        click.echo(f"page {name}: {url}")
    for problem in result.problems:
        click.echo(f"problem: {problem}")
    waiting = [n for n, t in result.targets.items() if t["status"] == "awaiting review"]
    if not result.ok:
        click.echo(f"FAILED: {len(result.problems)} problem(s) above")
    elif waiting:
        click.echo(f"OK: every write sent reached its final state; {', '.join(waiting)} "
                   "still await a person's approval (nothing was written to them)")
    else:
        click.echo("OK: every write reached its final state")
