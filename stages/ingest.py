"""DVC stage `ingest`: parameters from params.yaml, the work in tsloc.pipeline.ingest.run."""
import sys

from tsloc.cli import main

sys.exit(main(["ingest"]))
