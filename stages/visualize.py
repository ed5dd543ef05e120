"""DVC stage `visualize`: parameters from params.yaml, the work in tsloc.pipeline.visualize.run."""
import sys

from tsloc.cli import main

sys.exit(main(["visualize"]))
