"""DVC stage `evaluate`: parameters from params.yaml, the work in tsloc.pipeline.run_evaluate."""
import sys

from tsloc.cli import main

sys.exit(main(["evaluate"]))
