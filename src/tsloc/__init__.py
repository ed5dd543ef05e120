"""tsloc: localise and classify traffic signs (BelgiumTSC) with transfer learning, as a DVC pipeline."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`tsloc.load` on first use (PEP 562): importing the package for a stage loads no inference code."""
    if name == "load":
        from .serving.api import load
        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
