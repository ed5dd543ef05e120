"""tsloc: localise and classify traffic signs (BelgiumTSC) with transfer learning, as a DVC pipeline."""

__version__ = "0.1.0"
