"""Epic Haiku ambient simulator (Epic's side of /work/shared/vendors/epic-haiku-ambient.md)."""
from contract_tests.epic_haiku.simulator import (
    CALLBACK_PATH,
    CallRecord,
    Delivery,
    EpicSimulator,
    Fault,
    RecordResult,
    cut_wav,
    serve,
    synth_wav,
)

__all__ = ["CALLBACK_PATH", "CallRecord", "Delivery", "EpicSimulator", "Fault", "RecordResult", "cut_wav",
           "serve", "synth_wav"]
