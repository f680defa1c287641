"""Speech to text behind the `Transcriber` port: faster-whisper on CPU, no network."""
from .audio import decode_wav, handoff_point
from .vocabulary import default_vocabulary, hotword_string
from .whisper import FasterWhisperTranscriber, clear_model_cache, model_load_count

__all__ = ["FasterWhisperTranscriber", "clear_model_cache", "decode_wav", "default_vocabulary",
           "handoff_point", "hotword_string", "model_load_count"]
