"""Local speech with sherpa-onnx: VAD, ASR, TTS and the models they load."""
