"""Speech to text behind the `Transcriber` port: faster-whisper on CPU, no network."""
from .audio import decode_wav, handoff_point
from .vocabulary import default_vocabulary, hotword_string
from .whisper import FasterWhisperTranscriber, clear_model_cache, model_load_count

__all__ = ["FasterWhisperTranscriber", "clear_model_cache", "decode_wav", "default_vocabulary",
           "handoff_point", "hotword_string", "model_load_count"]


def transcriber_for(org) -> FasterWhisperTranscriber:
    """The org's transcriber: its configured local model folder, else its packaged model
    by name (`transcription.model`), else the environment's or the packaged default
    (models.DEFAULT_MODEL). The model itself is loaded once per process (whisper.py)."""
    settings = getattr(org, "transcription", None)
    model_dir = getattr(settings, "model_dir", None)
    model = getattr(settings, "model", None)
    return FasterWhisperTranscriber(model_dir, model=model if model_dir is None else None)


__all__.append("transcriber_for")
