"""DVC stage `train`: parameters from params.yaml, the work in tsloc.pipeline.run_train."""
import sys

from tsloc.cli import main

sys.exit(main(["train"]))
