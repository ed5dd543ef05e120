"""DVC stage `train`: parameters from params.yaml, the work in tsloc.pipeline.train.run."""
import sys

from tsloc.cli import main

sys.exit(main(["train"]))
