"""tsloc: find, name and box traffic signs, as a DVC pipeline, with the tools around a trained model.

    import tsloc
    model = tsloc.load("belgiumtsc")      # a ready model, or a .onnx / .pt file
    model.predict("sign.jpg")"""

__version__ = "0.1.0"
__all__ = ["load", "Model", "__version__"]


def __getattr__(name: str):
    """`tsloc.load` and `tsloc.Model` on first use (PEP 562): importing the package for a stage loads
    no inference code."""
    if name in ("load", "Model"):
        from .serving import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
