"""DVC stage `evaluate`: parameters from params.yaml, the work in tsloc.pipeline.evaluate.run."""
import sys

from tsloc.cli import main

sys.exit(main(["evaluate"]))
