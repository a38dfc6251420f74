"""Readers that turn a checkpoint's files into a :class:`ropepatch.metadata.view.ConfigView`."""
