"""DVC stage `split`: parameters from params.yaml, the work in tsloc.pipeline.run_split."""
import sys

from tsloc.cli import main

sys.exit(main(["split"]))
