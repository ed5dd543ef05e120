"""DVC stage `split`: parameters from params.yaml, the work in tsloc.pipeline.split.run."""
import sys

from tsloc.cli import main

sys.exit(main(["split"]))
