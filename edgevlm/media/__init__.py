"""The media layer: video files, timelines, live sources, caption writers and output files, built on the engine's
public API (edgevlm.engine) and never on its private names."""
