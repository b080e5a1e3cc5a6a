"""The embedded default model (``models/shapes/``), its procedural data and its attribute reader."""
