"""Detectors: plugins that read a checkpoint's metadata and say which scaling it describes."""
