"""DVC stage `features`: parameters from params.yaml, the work in tsloc.pipeline.features.run."""
import sys

from tsloc.cli import main

sys.exit(main(["features"]))
