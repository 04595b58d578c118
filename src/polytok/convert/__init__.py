"""Conversion of the official UniTok and EvoTok checkpoints into polytok checkpoints.

The key mappings live in :mod:`polytok.convert.unitok` and :mod:`polytok.convert.evotok`; both work on a
:class:`~polytok.convert.state.StateMapper`, which reports any official key that was not consumed and any
that was expected but absent.
"""

from polytok.convert.state import ConversionError, StateMapper

__all__ = ["ConversionError", "StateMapper"]
