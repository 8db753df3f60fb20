"""Data: the synthesized demo subject, real-video preprocessing and the training dataset."""
