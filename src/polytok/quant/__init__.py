"""Quantizers sharing one interface: ``forward(z) -> QuantizerOutput``, ``indices_to_codes``,
``codebook_usage``. See :mod:`polytok.quant.core` for the engine and the shape conventions."""

from polytok.quant.bsq import BinarySphericalQuantizer
from polytok.quant.codebook import Codebook
from polytok.quant.core import LevelledQuantizer, QuantizerOutput
from polytok.quant.dual import DualCodebookQuantizer, DualQuantizerOutput
from polytok.quant.fsq import FiniteScalarQuantizer
from polytok.quant.implicit import ImplicitQuantizer
from polytok.quant.lfq import LookupFreeQuantizer
from polytok.quant.mcq import MultiCodebookQuantizer
from polytok.quant.multiscale import MultiScaleDualQuantizer, MultiScaleResidualQuantizer
from polytok.quant.residual import ResidualQuantizer
from polytok.quant.search import nearest_codes, nearest_codes_reference
from polytok.quant.updates import CodebookUpdates, codebook_owners
from polytok.quant.vq import VectorQuantizer

__all__ = [
    "BinarySphericalQuantizer",
    "Codebook",
    "CodebookUpdates",
    "DualCodebookQuantizer",
    "DualQuantizerOutput",
    "FiniteScalarQuantizer",
    "ImplicitQuantizer",
    "LevelledQuantizer",
    "LookupFreeQuantizer",
    "MultiCodebookQuantizer",
    "MultiScaleDualQuantizer",
    "MultiScaleResidualQuantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "VectorQuantizer",
    "codebook_owners",
    "nearest_codes",
    "nearest_codes_reference",
]
