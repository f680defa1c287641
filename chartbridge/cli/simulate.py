"""`chartbridge simulate VENDOR --port P`: run a vendor simulator standalone so an
implementation team can point an org (or a real engine) at it."""
import importlib

import click

SIMULATORS = {
    "epic": ("contract_tests.epic_haiku.simulator", 8790, "Epic Haiku ambient (Interconnect + token endpoint)"),
    "fhir": ("contract_tests.fhir_docref.simulator", 8791, "FHIR R4 server (us-core or epic profile)"),
    "athena": ("contract_tests.athenaone.simulator", 8792, "athenaOne API"),
    "mllp": ("contract_tests.hl7_mdm.simulator", 2575, "HL7 v2 MLLP receiver"),
}


@click.group("simulate")
def simulate() -> None:
    """Run a vendor simulator in the foreground (Ctrl-C stops it)."""


def _command(name: str, module: str, default_port: int, summary: str) -> click.Command:
    @click.command(name, help=f"Run the {summary} simulator.")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=default_port, show_default=True, type=int)
    @click.option("--engine-url", default=None, help="epic only: the engine to deliver callbacks to.")
    @click.option("--profile", default=None, help="fhir only: us-core or epic.")
    def run(host: str, port: int, engine_url: str | None, profile: str | None) -> None:
        serve = importlib.import_module(module).serve
        options = {}
        if engine_url:
            options["engine_url"] = engine_url
        if profile:
            options["profile"] = profile
        try:
            serve(host=host, port=port, **options)
        except KeyboardInterrupt:
            pass
    return run


for _name, (_module, _port, _summary) in SIMULATORS.items():
    simulate.add_command(_command(_name, _module, _port, _summary))
