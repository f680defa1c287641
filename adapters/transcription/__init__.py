"""Speech to text behind the `Transcriber` port: faster-whisper on CPU, no network."""
from .audio import decode_wav, handoff_point
from .vocabulary import default_vocabulary, hotword_string
from .whisper import FasterWhisperTranscriber, clear_model_cache, model_load_count

__all__ = ["FasterWhisperTranscriber", "clear_model_cache", "decode_wav", "default_vocabulary",
           "handoff_point", "hotword_string", "model_load_count"]


def transcriber_for(org) -> FasterWhisperTranscriber:
    """The org's transcriber: its configured local model folder, else the environment's
    or the packaged tiny.en. The model itself is loaded once per process (whisper.py)."""
    model_dir = getattr(getattr(org, "transcription", None), "model_dir", None)
    return FasterWhisperTranscriber(model_dir)


__all__.append("transcriber_for")
