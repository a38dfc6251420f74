"""Readers that turn a checkpoint's files into a :class:`ropepatch.detectors.view.ConfigView`."""
