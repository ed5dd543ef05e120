"""DVC stage `visualize`: parameters from params.yaml, the work in tsloc.pipeline.run_visualize."""
import sys

from tsloc.cli import main

sys.exit(main(["visualize"]))
