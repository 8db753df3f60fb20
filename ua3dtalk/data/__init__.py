"""Subject data: the synthesized demo subject (``synth``), real-video preprocessing
and the training dataset. Heavy dependencies (MediaPipe, espeak-ng) are imported
by the modules that need them, so importing this package stays cheap."""
