"""`python -m tsloc.pipeline STAGE [--params FILE]`: one stage as the scripts in stages/ run it
(torchrun's ranks of a distributed train start here)."""
import importlib
import sys

from ..guard import stage_main

stage = sys.argv[1]
sys.exit(stage_main(stage, importlib.import_module(f"{__package__}.{stage}").run, sys.argv[2:]))
