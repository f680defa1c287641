"""The visit `chartbridge demo` plays (16 kHz mono WAV), shipped in the wheel. The test
fixture tests/fixtures/encounters/encounter-1.wav is a link to this file."""
from pathlib import Path

DEMO_VISIT = Path(__file__).resolve().parent / "encounter-1.wav"
