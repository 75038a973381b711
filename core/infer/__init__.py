"""Inference shared by classify, detect, monitor and export: audio sources, windowing, the fold ensemble of
trained solutions or an exported ONNX model, the blend rule. Never imports the training loop (core.train)."""
